//! The frontend half of the XenBus handshake, as Linux xen-blkfront runs it: wait for the
//! backend's `InitWait`, read its features, negotiate, publish the rings and ports, move to
//! `Initialised`, wait for `Connected`, read the disk's geometry.

use std::time::Duration;

use xen_abi::blkif::XEN_IO_PROTO_ABI_X86_32;
use xen_abi::DomId;
use xen_blkif::Abi;
use xen_evtchn::EventChannel;
use xen_grant::GrantAllocator;
use xen_store::{XenbusState, Xs};

use crate::{Blkfront, Error, FrontConfig, Result};

/// What the frontend would like; each feature can be switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontOptions {
    /// Queues wanted (`multi-queue-num-queues`), capped by the backend's maximum.
    pub queues: u32,
    /// Ring pages wanted, capped by the backend's `max-ring-page-order`.
    pub ring_pages: u32,
    /// The ABI to speak.
    pub abi: Abi,
    /// Use persistent grants if the backend offers them.
    pub persistent: bool,
    /// Use indirect descriptors (up to this many segments) if the backend offers them.
    pub indirect_segments: u16,
}

impl Default for FrontOptions {
    fn default() -> Self {
        Self {
            queues: 1,
            ring_pages: 1,
            abi: Abi::X86_64,
            persistent: true,
            indirect_segments: 256,
        }
    }
}

/// A connected disk.
pub struct BlkDevice<A: GrantAllocator, E: EventChannel> {
    /// One frontend per queue.
    pub queues: Vec<Blkfront<A, E>>,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Logical sector size.
    pub sector_size: u32,
    /// `info` flags (`VDISK_*`).
    pub info: u32,
    /// The frontend directory.
    pub dir: String,
    /// The backend directory.
    pub backend_dir: String,
}

fn num(v: Option<Vec<u8>>) -> Option<u64> {
    v.and_then(|v| {
        std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
}

/// Waits until the state at `path` satisfies `pred`.
pub async fn wait_state(
    xs: &Xs,
    path: &str,
    timeout: Duration,
    pred: impl Fn(XenbusState) -> bool,
) -> Result<XenbusState> {
    xs.wait_state(path, timeout, pred)
        .await
        .map_err(|e| Error::Xenstore(e.to_string()))?
        .ok_or(Error::Timeout)
}

/// Connects the device whose frontend directory is `dir`; `handles` gives each queue its own
/// grant allocator and event channel.
pub async fn connect<A, E>(
    xs: &Xs,
    dir: &str,
    options: FrontOptions,
    mut handles: impl FnMut() -> (A, E),
) -> Result<BlkDevice<A, E>>
where
    A: GrantAllocator,
    E: EventChannel,
{
    let x = |e: xen_store::Error| Error::Xenstore(e.to_string());
    let backend_dir = xs.read_string(&format!("{dir}/backend")).await.map_err(x)?;
    let backend: DomId = num(xs.read_opt(&format!("{dir}/backend-id")).await.map_err(x)?)
        .and_then(|v| DomId::try_from(v).ok())
        .ok_or(Error::Invalid("no backend-id"))?;
    let timeout = Duration::from_secs(30);
    wait_state(xs, &format!("{backend_dir}/state"), timeout, |s| {
        s == XenbusState::InitWait
    })
    .await?;
    let feature = |k: &'static str| {
        let p = format!("{backend_dir}/{k}");
        async move {
            num(xs.read_opt(&p).await.map_err(x)?)
                .ok_or(())
                .or(Ok::<u64, Error>(0))
        }
    };
    let max_order = feature("max-ring-page-order").await?.min(4) as u32;
    let max_queues = feature("multi-queue-max-queues").await?.max(1) as u32;
    let persistent = options.persistent && feature("feature-persistent").await? == 1;
    let indirect = (feature("feature-max-indirect-segments")
        .await?
        .min(u64::from(options.indirect_segments))) as u16;
    let ring_pages = options.ring_pages.min(1 << max_order).max(1);
    let queues = options.queues.min(max_queues).max(1);
    let config = FrontConfig {
        ring_pages,
        abi: options.abi,
        persistent,
        indirect_segments: indirect,
    };
    let mut fronts = Vec::new();
    for _ in 0..queues {
        let (alloc, evtchn) = handles();
        fronts.push(Blkfront::new(alloc, evtchn, backend, config)?);
    }
    let mut keys: Vec<(String, String)> = Vec::new();
    for (q, f) in fronts.iter().enumerate() {
        let qdir = if queues == 1 {
            dir.to_string()
        } else {
            format!("{dir}/queue-{q}")
        };
        if ring_pages == 1 {
            keys.push((
                format!("{qdir}/ring-ref"),
                f.ring_refs().first().copied().unwrap_or(0).to_string(),
            ));
        } else {
            for (i, r) in f.ring_refs().iter().enumerate() {
                keys.push((format!("{qdir}/ring-ref{i}"), r.to_string()));
            }
        }
        keys.push((format!("{qdir}/event-channel"), f.port().to_string()));
    }
    if ring_pages > 1 {
        keys.push((
            format!("{dir}/ring-page-order"),
            ring_pages.trailing_zeros().to_string(),
        ));
    }
    if queues > 1 {
        keys.push((format!("{dir}/multi-queue-num-queues"), queues.to_string()));
    }
    if options.abi == Abi::X86_32 {
        keys.push((
            format!("{dir}/protocol"),
            XEN_IO_PROTO_ABI_X86_32.to_string(),
        ));
    }
    keys.push((
        format!("{dir}/feature-persistent"),
        u8::from(persistent).to_string(),
    ));
    keys.push((
        format!("{dir}/state"),
        XenbusState::Initialised.as_text().to_string(),
    ));
    xs.transaction(|tx| {
        let keys = keys.clone();
        async move {
            for (k, v) in keys {
                tx.write(&k, v.as_bytes()).await?;
            }
            Ok(())
        }
    })
    .await
    .map_err(x)?;
    let state = wait_state(xs, &format!("{backend_dir}/state"), timeout, |s| {
        s == XenbusState::Connected || s >= XenbusState::Closing
    })
    .await?;
    if state != XenbusState::Connected {
        let error = xs
            .read_opt(&format!("{backend_dir}/error"))
            .await
            .map_err(x)?;
        return Err(Error::Xenstore(format!(
            "backend refused to connect: {}",
            error
                .map(|e| String::from_utf8_lossy(&e).into_owned())
                .unwrap_or_default()
        )));
    }
    let sectors = num(xs
        .read_opt(&format!("{backend_dir}/sectors"))
        .await
        .map_err(x)?)
    .ok_or(Error::Invalid("no sectors"))?;
    let sector_size = num(xs
        .read_opt(&format!("{backend_dir}/sector-size"))
        .await
        .map_err(x)?)
    .unwrap_or(512) as u32;
    let info = num(xs
        .read_opt(&format!("{backend_dir}/info"))
        .await
        .map_err(x)?)
    .unwrap_or(0) as u32;
    xs.write_state(&format!("{dir}/state"), XenbusState::Connected)
        .await
        .map_err(x)?;
    Ok(BlkDevice {
        queues: fronts,
        sectors,
        sector_size,
        info,
        dir: dir.to_string(),
        backend_dir,
    })
}

impl<A: GrantAllocator, E: EventChannel> BlkDevice<A, E> {
    /// Writes our `state`, then waits until the backend's satisfies `until`.
    async fn step(
        &self,
        xs: &Xs,
        state: XenbusState,
        until: impl Fn(XenbusState) -> bool,
    ) -> Result<()> {
        xs.write_state(&format!("{}/state", self.dir), state)
            .await
            .map_err(|e| Error::Xenstore(e.to_string()))?;
        wait_state(
            xs,
            &format!("{}/state", self.backend_dir),
            Duration::from_secs(30),
            until,
        )
        .await
        .map(drop)
    }

    /// Waits until the backend announces a size other than [`BlkDevice::sectors`] and takes
    /// it, as Linux blkfront learns of an online resize: the backend writes `sectors` and
    /// writes its `state` (`Connected`) again, and blkfront re-reads the geometry whenever the
    /// backend's state is written while connected. Returns the new size in 512-byte sectors.
    pub async fn wait_for_resize(&mut self, xs: &Xs, timeout: Duration) -> Result<u64> {
        let x = |e: xen_store::Error| Error::Xenstore(e.to_string());
        let state_path = format!("{}/state", self.backend_dir);
        let mut watch = xs.watch(&state_path).await.map_err(x)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // The first event is the watch's own; each later one is a write of `state`.
            tokio::time::timeout_at(deadline, watch.next())
                .await
                .map_err(|_| Error::Timeout)?;
            if xs.read_state(&state_path).await.map_err(x)? != XenbusState::Connected {
                continue;
            }
            let sectors = num(xs
                .read_opt(&format!("{}/sectors", self.backend_dir))
                .await
                .map_err(x)?);
            if let Some(sectors) = sectors.filter(|&s| s != self.sectors) {
                self.sectors = sectors;
                return Ok(sectors);
            }
        }
    }

    /// Closes the device as blkfront does: `Closing`, wait for the backend to close, `Closed`.
    /// The rings and grants are released after the backend has let go of them.
    pub async fn close(self, xs: &Xs) -> Result<()> {
        let gone = |s: XenbusState| s == XenbusState::Unknown;
        self.step(xs, XenbusState::Closing, |s| {
            s >= XenbusState::Closing || gone(s)
        })
        .await?;
        self.step(xs, XenbusState::Closed, |s| {
            s == XenbusState::Closed || gone(s)
        })
        .await?;
        drop(self.queues);
        Ok(())
    }
}
