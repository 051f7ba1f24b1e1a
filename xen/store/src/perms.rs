//! Node permissions: `r<domid>`, `w<domid>`, `b<domid>` (both), `n<domid>` (none). The first
//! entry names the owner and the access of every domain not listed after it.

use std::fmt;

use xen_abi::DomId;

/// An access level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PermKind {
    /// No access.
    None,
    /// Read.
    Read,
    /// Write.
    Write,
    /// Read and write.
    Both,
}

impl PermKind {
    /// Whether reading is allowed.
    pub fn can_read(self) -> bool {
        matches!(self, Self::Read | Self::Both)
    }
    /// Whether writing is allowed.
    pub fn can_write(self) -> bool {
        matches!(self, Self::Write | Self::Both)
    }
    fn letter(self) -> char {
        match self {
            Self::None => 'n',
            Self::Read => 'r',
            Self::Write => 'w',
            Self::Both => 'b',
        }
    }
}

/// One permission entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain.
    pub domid: DomId,
    /// Its access.
    pub kind: PermKind,
}

impl Perm {
    /// An entry.
    pub fn new(domid: DomId, kind: PermKind) -> Self {
        Self { domid, kind }
    }

    /// Parses `r5`; `None` if malformed.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let (&letter, digits) = text.split_first()?;
        let kind = match letter {
            b'n' => PermKind::None,
            b'r' => PermKind::Read,
            b'w' => PermKind::Write,
            b'b' => PermKind::Both,
            _ => return None,
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let domid = std::str::from_utf8(digits).ok()?.parse().ok()?;
        Some(Self { domid, kind })
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind.letter(), self.domid)
    }
}

/// The access `domid` has under `perms` (owner-first list). Privileged callers are handled by
/// the caller; this applies the plain rules: the owner has full access, a listed domain has its
/// listed access, everyone else has the first entry's access.
pub fn access(perms: &[Perm], domid: DomId) -> PermKind {
    let Some(first) = perms.first() else {
        return PermKind::None;
    };
    if first.domid == domid {
        return PermKind::Both;
    }
    perms
        .iter()
        .skip(1)
        .find(|p| p.domid == domid)
        .map_or(first.kind, |p| p.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_access() {
        let perms: Vec<Perm> = ["n5", "r1", "w2"]
            .iter()
            .map(|t| Perm::parse(t.as_bytes()).unwrap())
            .collect();
        assert_eq!(access(&perms, 5), PermKind::Both);
        assert_eq!(access(&perms, 1), PermKind::Read);
        assert_eq!(access(&perms, 2), PermKind::Write);
        assert_eq!(access(&perms, 3), PermKind::None);
        assert_eq!(perms[1].to_string(), "r1");
        assert_eq!(Perm::parse(b"x1"), None);
        assert_eq!(Perm::parse(b"r"), None);
        assert_eq!(Perm::parse(b"r70000"), None);
        assert_eq!(Perm::parse(b"r-1"), None);
    }
}
