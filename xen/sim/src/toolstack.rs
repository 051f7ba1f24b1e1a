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

/// A split device to attach, as libxl writes it (`libxl__device_generic_add`).
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// The device kind (`vbd`, `vif`, ...).
    pub kind: String,
    /// The driver domain serving it.
    pub backend: DomId,
    /// The guest.
    pub frontend: DomId,
    /// The device id (for a disk, the virtual device number, e.g. 51712 for xvda).
    pub devid: u32,
    /// Extra backend keys (`params`, `mode`, ...).
    pub backend_keys: Vec<(String, String)>,
    /// Extra frontend keys (`virtual-device`, `device-type`, ...).
    pub frontend_keys: Vec<(String, String)>,
}

/// Writes a device's frontend and backend directories in one transaction, with libxl's
/// permissions: the frontend directory is the guest's (readable by the backend domain), the
/// backend directory is the driver domain's (readable by the guest).
pub async fn attach_device(xs: &xen_store::Xs, spec: &DeviceSpec) -> xen_store::Result<()> {
    let fe = xen_store::path::frontend_path(spec.frontend, &spec.kind, spec.devid);
    let be = xen_store::path::backend_path(spec.backend, &spec.kind, spec.frontend, spec.devid);
    xs.transaction(|tx| {
        let (fe, be, spec) = (fe.clone(), be.clone(), spec.clone());
        async move {
            tx.write(&fe, b"").await?;
            tx.set_perms(
                &fe,
                &[
                    Perm::new(spec.frontend, PermKind::None),
                    Perm::new(spec.backend, PermKind::Read),
                ],
            )
            .await?;
            tx.write(&be, b"").await?;
            tx.set_perms(
                &be,
                &[
                    Perm::new(spec.backend, PermKind::None),
                    Perm::new(spec.frontend, PermKind::Read),
                ],
            )
            .await?;
            let fe_keys = [
                ("backend", be.clone()),
                ("backend-id", spec.backend.to_string()),
                ("state", "1".to_string()),
            ];
            for (k, v) in fe_keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .chain(spec.frontend_keys.iter().cloned())
            {
                tx.write(&format!("{fe}/{k}"), v.as_bytes()).await?;
            }
            let be_keys = [
                ("frontend", fe.clone()),
                ("frontend-id", spec.frontend.to_string()),
                ("online", "1".to_string()),
                ("state", "1".to_string()),
            ];
            for (k, v) in be_keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .chain(spec.backend_keys.iter().cloned())
            {
                tx.write(&format!("{be}/{k}"), v.as_bytes()).await?;
            }
            Ok(())
        }
    })
    .await
}

/// Starts a device's removal as libxl does: `online` = 0 and the backend asked to close.
pub async fn request_detach(
    xs: &xen_store::Xs,
    kind: &str,
    backend: DomId,
    frontend: DomId,
    devid: u32,
) -> xen_store::Result<()> {
    let be = xen_store::path::backend_path(backend, kind, frontend, devid);
    xs.transaction(|tx| {
        let be = be.clone();
        async move {
            tx.write(&format!("{be}/online"), b"0").await?;
            tx.write(&format!("{be}/state"), b"5").await?;
            Ok(())
        }
    })
    .await
}

/// Removes a device's directories (after the backend reached `Closed`). A backend running in a
/// driver domain removes its own directory once the device is closed and offline, as `xl devd`
/// does there; removing it again is harmless.
pub async fn remove_device(
    xs: &xen_store::Xs,
    kind: &str,
    backend: DomId,
    frontend: DomId,
    devid: u32,
) -> xen_store::Result<()> {
    xs.rm(&xen_store::path::frontend_path(frontend, kind, devid))
        .await?;
    xs.rm(&xen_store::path::backend_path(
        backend, kind, frontend, devid,
    ))
    .await
}
