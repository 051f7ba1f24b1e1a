//! The part of the toolstack the simulated host plays itself: a domain's xenstore directory at
//! creation (laid out and permissioned as libxl does) and its removal after the domain dies.

use xen_abi::xs_wire::msg;
use xen_abi::DomId;
use xen_store::perms::{Perm, PermKind};
use xen_store::wire::join_fields;
use xen_store::XsErrno;

use crate::xenstored::Xenstored;

fn write(xsd: &Xenstored, path: &str, value: &str) -> Result<(), XsErrno> {
    let mut payload = join_fields([path.as_bytes()]);
    payload.extend_from_slice(value.as_bytes());
    xsd.dom0_request(msg::WRITE, payload).map(drop)
}

fn set_perms(xsd: &Xenstored, path: &str, perms: &[Perm]) -> Result<(), XsErrno> {
    let texts: Vec<String> = perms.iter().map(ToString::to_string).collect();
    let payload =
        join_fields(std::iter::once(path.as_bytes()).chain(texts.iter().map(|t| t.as_bytes())));
    xsd.dom0_request(msg::SET_PERMS, payload).map(drop)
}

/// Writes `/local/domain/<domid>` as libxl does: the directory and the keys the toolstack
/// controls are dom0's and readable by the domain; `data`, `drivers`, `feature`, `attr`,
/// `error` and `control/shutdown` belong to the domain.
pub fn write_domain_directory(xsd: &Xenstored, domid: DomId, name: &str) -> Result<(), XsErrno> {
    let base = xen_store::path::domain_path(domid);
    let ro = [
        Perm::new(0, PermKind::None),
        Perm::new(domid, PermKind::Read),
    ];
    let rw = [Perm::new(domid, PermKind::None)];
    for (key, value) in [
        ("", ""),
        ("/name", name),
        ("/domid", &domid.to_string()),
        ("/device", ""),
        ("/control", ""),
    ] {
        let path = format!("{base}{key}");
        write(xsd, &path, value)?;
        set_perms(xsd, &path, &ro)?;
    }
    for key in [
        "data",
        "drivers",
        "feature",
        "attr",
        "error",
        "control/shutdown",
    ] {
        let path = format!("{base}/{key}");
        write(xsd, &path, "")?;
        set_perms(xsd, &path, &rw)?;
    }
    Ok(())
}

/// Removes `/local/domain/<domid>` (what `xl destroy` does after the domain is gone).
pub fn remove_domain_directory(xsd: &Xenstored, domid: DomId) -> Result<(), XsErrno> {
    xsd.dom0_request(
        msg::RM,
        join_fields([xen_store::path::domain_path(domid).as_bytes()]),
    )
    .map(drop)
}
