//! Xenstore path rules (as xenstored checks them) and the XenBus directory conventions.

use xen_abi::xs_wire::{XENSTORE_ABS_PATH_MAX, XENSTORE_REL_PATH_MAX};
use xen_abi::DomId;

use crate::error::Error;

/// Why a path is invalid, or `None` if valid. Absolute paths start with `/`; relative paths
/// are relative to the connection's `/local/domain/<id>`; `@`-paths are special watch paths.
pub fn check(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("empty path");
    }
    if path.starts_with('@') {
        return (path != "@introduceDomain" && path != "@releaseDomain")
            .then_some("unknown special path");
    }
    let max = if path.starts_with('/') {
        XENSTORE_ABS_PATH_MAX
    } else {
        XENSTORE_REL_PATH_MAX
    };
    if path.len() > max {
        return Some("path too long");
    }
    if path != "/" && path.ends_with('/') {
        return Some("trailing slash");
    }
    if path.contains("//") {
        return Some("empty path component");
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b))
    {
        return Some("character outside [A-Za-z0-9-/_@]");
    }
    None
}

/// Validates a path for a request.
pub fn validate(path: &str) -> Result<(), Error> {
    match check(path) {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidPath {
            path: path.to_string(),
            reason,
        }),
    }
}

/// `/local/domain/<domid>`.
pub fn domain_path(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

/// The frontend directory `/local/domain/<frontend>/device/<kind>/<devid>`.
pub fn frontend_path(frontend: DomId, kind: &str, devid: u32) -> String {
    format!("/local/domain/{frontend}/device/{kind}/{devid}")
}

/// The backend directory `/local/domain/<backend>/backend/<kind>/<frontend>/<devid>`.
pub fn backend_path(backend: DomId, kind: &str, frontend: DomId, devid: u32) -> String {
    format!("/local/domain/{backend}/backend/{kind}/{frontend}/{devid}")
}

/// The directory where a backend domain finds its devices of one kind.
pub fn backend_root(backend: DomId, kind: &str) -> String {
    format!("/local/domain/{backend}/backend/{kind}")
}

/// Joins a directory and a key.
pub fn join(dir: &str, key: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{key}")
    } else {
        format!("{dir}/{key}")
    }
}

/// Parses `/local/domain/<be>/backend/<kind>/<fe>/<devid>[/...]` into its parts.
pub fn parse_backend_path(path: &str) -> Option<(DomId, String, DomId, u32)> {
    let mut it = path.strip_prefix("/local/domain/")?.split('/');
    let be = it.next()?.parse().ok()?;
    if it.next()? != "backend" {
        return None;
    }
    let kind = it.next()?.to_string();
    let fe = it.next()?.parse().ok()?;
    let devid = it.next()?.parse().ok()?;
    Some((be, kind, fe, devid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rules() {
        assert_eq!(check("/local/domain/0"), None);
        assert_eq!(check("/"), None);
        assert_eq!(check("device/vbd/51712"), None);
        assert_eq!(check("@releaseDomain"), None);
        assert!(check("@other").is_some());
        assert!(check("").is_some());
        assert!(check("/a//b").is_some());
        assert!(check("/a/").is_some());
        assert!(check("/a b").is_some());
        assert!(check(&format!("/{}", "a".repeat(3072))).is_some());
        assert_eq!(check(&format!("/{}", "a".repeat(3071))), None);
        assert!(check(&"a".repeat(2049)).is_some());
    }

    #[test]
    fn xenbus_paths() {
        assert_eq!(
            frontend_path(5, "vbd", 51712),
            "/local/domain/5/device/vbd/51712"
        );
        let be = backend_path(1, "vbd", 5, 51712);
        assert_eq!(be, "/local/domain/1/backend/vbd/5/51712");
        assert_eq!(
            parse_backend_path(&join(&be, "state")),
            Some((1, "vbd".into(), 5, 51712))
        );
        assert_eq!(parse_backend_path("/local/domain/1/device/vbd/5/1"), None);
        assert_eq!(join("/a/", "b"), "/a/b");
    }
}
