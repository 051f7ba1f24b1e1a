//! The broker's socket: one thread per connection (connections are few and requests short).

use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use super::copybuf::CopyBuffer;
use super::proto::{decode, encode, recv_frame, send_frame, Reply, Request};
use super::{error, Hypervisor};

fn send(stream: &UnixStream, reply: &Reply, fds: &[std::os::fd::OwnedFd]) -> std::io::Result<()> {
    let raw: Vec<_> = fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    send_frame(stream, &encode(reply)?, &raw)
}

fn serve_connection(hv: &Hypervisor, stream: UnixStream) {
    let hello = match recv_frame(&stream).and_then(|(bytes, _)| decode::<Request>(&bytes)) {
        Ok(Request::Hello(h)) => h,
        Ok(_) => {
            let _ = send(
                &stream,
                &error(libc::EPROTO, "the first message must be Hello"),
                &[],
            );
            return;
        }
        Err(_) => return,
    };
    let conn = match hv.connect(&hello, &stream) {
        Ok(id) => id,
        Err(reply) => {
            let _ = send(&stream, &reply, &[]);
            return;
        }
    };
    if send(&stream, &Reply::Ok, &[]).is_err() {
        hv.disconnect(conn);
        return;
    }
    // The connection's copy buffer, once the client registers one.
    let mut copy_buffer: Option<CopyBuffer> = None;
    loop {
        let (request, fds) = match recv_frame(&stream) {
            Ok((bytes, fds)) => match decode::<Request>(&bytes) {
                Ok(r) => (r, fds),
                Err(e) => {
                    tracing::warn!(
                        domid = hello.domid,
                        "malformed hypercall, closing the connection: {e}"
                    );
                    break;
                }
            },
            Err(_) => break,
        };
        let answer = match request {
            Request::RegisterCopyBuffer { len } => match CopyBuffer::register(fds, len) {
                Ok(buffer) => {
                    copy_buffer = Some(buffer);
                    Reply::Ok.into()
                }
                Err(why) => error(libc::EINVAL, why).into(),
            },
            Request::CopyGrantsBuffered { segments } => hv
                .copy_grants_buffered(conn, &segments, copy_buffer.as_ref())
                .into(),
            other => hv.handle(conn, other),
        };
        if send(&stream, &answer.reply, &answer.fds).is_err() {
            break;
        }
    }
    hv.disconnect(conn);
}

/// Accepts connections on `listener` forever (run it on its own thread).
pub fn serve(hv: Arc<Hypervisor>, listener: UnixListener) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let hv = Arc::clone(&hv);
                let spawned = std::thread::Builder::new()
                    .name("hv-conn".into())
                    .spawn(move || serve_connection(&hv, stream));
                if let Err(e) = spawned {
                    tracing::warn!("cannot start a connection thread: {e}");
                }
            }
            Err(e) => tracing::warn!("hypervisor accept failed: {e}"),
        }
    }
}
