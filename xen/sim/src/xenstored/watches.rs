//! Watch registrations and the matching rule that decides who hears about a change.

use super::tree::{Caller, Change};

/// One registered watch of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchReg {
    /// Absolute (or `@special`) watched path.
    pub path: String,
    /// The client's token.
    pub token: String,
    /// The prefix to strip from event paths when the watch was registered with a relative path.
    pub relative_to: Option<String>,
    /// Maximum depth below `path` that fires (the optional `<depth>` argument).
    pub depth: Option<u32>,
}

impl WatchReg {
    /// The event path to report for `change`, if this watch fires for it and `caller` (the
    /// watching connection) may read the changed node.
    pub fn event_path(&self, caller: Caller, change: &Change) -> Option<String> {
        let under = if change.exact {
            change.path == self.path
        } else if self.path == "/" {
            change.path.starts_with('/')
        } else {
            change.path == self.path
                || change
                    .path
                    .strip_prefix(self.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        if !under {
            return None;
        }
        if let Some(depth) = self.depth {
            let below = change
                .path
                .get(self.path.len()..)
                .unwrap_or("")
                .matches('/')
                .count();
            if below as u32 > depth {
                return None;
            }
        }
        if !caller.access(&change.perms).can_read() {
            return None;
        }
        Some(self.reported(&change.path))
    }

    /// The path as the client should see it (relative if it watched a relative path).
    pub fn reported(&self, path: &str) -> String {
        match &self.relative_to {
            Some(prefix) => path
                .strip_prefix(prefix.as_str())
                .and_then(|p| p.strip_prefix('/'))
                .unwrap_or(path)
                .to_string(),
            None => path.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use xen_store::perms::{Perm, PermKind};

    use super::*;

    fn change(path: &str, exact: bool, owner: u16) -> Change {
        Change {
            path: path.into(),
            exact,
            perms: vec![Perm::new(owner, PermKind::None)],
        }
    }

    #[test]
    fn matching_rules() {
        let dom0 = Caller {
            domid: 0,
            target: None,
        };
        let dom5 = Caller {
            domid: 5,
            target: None,
        };
        let w = WatchReg {
            path: "/a/b".into(),
            token: "t".into(),
            relative_to: None,
            depth: None,
        };
        assert_eq!(
            w.event_path(dom0, &change("/a/b/c", false, 0)),
            Some("/a/b/c".into())
        );
        assert_eq!(w.event_path(dom0, &change("/a/bc", false, 0)), None);
        assert_eq!(w.event_path(dom0, &change("/a", false, 0)), None);
        assert_eq!(w.event_path(dom0, &change("/a/b/c", true, 0)), None);
        assert_eq!(
            w.event_path(dom5, &change("/a/b", false, 0)),
            None,
            "unreadable node"
        );
        assert_eq!(
            w.event_path(dom5, &change("/a/b", false, 5)),
            Some("/a/b".into())
        );
        let rel = WatchReg {
            path: "/local/domain/5/data".into(),
            token: "t".into(),
            relative_to: Some("/local/domain/5".into()),
            depth: Some(1),
        };
        assert_eq!(
            rel.event_path(dom5, &change("/local/domain/5/data/x", false, 5)),
            Some("data/x".into())
        );
        assert_eq!(
            rel.event_path(dom5, &change("/local/domain/5/data/x/y", false, 5)),
            None,
            "too deep"
        );
    }
}
