//! The byte transports a client runs over: the xenstored unix socket (async) or the
//! `/dev/xen/xenbus` character device (a blocking reader thread, since the device's read does
//! not honour non-blocking mode on every kernel).

use std::io::{Read, Write};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::error::Error;
use crate::wire::{decode_header, Decoder, Message, HEADER_SIZE};

/// The sending half.
pub(crate) enum Writer {
    Unix(OwnedWriteHalf),
    Device(Arc<std::fs::File>),
}

impl Writer {
    pub(crate) async fn send(&mut self, bytes: Vec<u8>) -> std::io::Result<()> {
        match self {
            Self::Unix(w) => w.write_all(&bytes).await,
            Self::Device(file) => {
                let file = Arc::clone(file);
                tokio::task::spawn_blocking(move || (&*file).write_all(&bytes))
                    .await
                    .map_err(std::io::Error::other)?
            }
        }
    }
}

/// Reads messages from a socket until EOF or a protocol error.
pub(crate) async fn read_unix(
    mut reader: OwnedReadHalf,
    mut deliver: impl FnMut(Message),
) -> Result<(), Error> {
    loop {
        let mut head = [0u8; HEADER_SIZE];
        match reader.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => {
                return Err(Error::Io {
                    target: "xenstore socket".into(),
                    source: e,
                })
            }
        }
        let header = decode_header(&head)?;
        let mut payload = vec![0u8; header.len as usize];
        reader
            .read_exact(&mut payload)
            .await
            .map_err(|e| Error::Io {
                target: "xenstore socket".into(),
                source: e,
            })?;
        deliver(Message {
            type_: header.type_,
            req_id: header.req_id,
            tx_id: header.tx_id,
            payload,
        });
    }
}

/// Reads messages from the xenbus device on the calling (dedicated) thread.
pub(crate) fn read_device(
    file: &std::fs::File,
    mut deliver: impl FnMut(Message),
) -> Result<(), Error> {
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 4096 + HEADER_SIZE];
    loop {
        let n = match (&*file).read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Io {
                    target: "/dev/xen/xenbus".into(),
                    source: e,
                })
            }
        };
        decoder.push(buf.get(..n).unwrap_or_default());
        while let Some(msg) = decoder.next_message()? {
            deliver(msg);
        }
    }
}
