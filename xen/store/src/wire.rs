//! `xs_wire` message framing: a 16-byte header and a payload of at most
//! `XENSTORE_PAYLOAD_MAX` bytes. Pure: no I/O.

use xen_abi::xs_wire::{XsdSockmsg, XENSTORE_PAYLOAD_MAX};
use zerocopy::{FromBytes, IntoBytes};

use crate::error::Error;

/// Size of the message header.
pub const HEADER_SIZE: usize = 16;

/// One xenstore message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `XS_*` type.
    pub type_: u32,
    /// Request id (echoed in the reply; 0 in watch events).
    pub req_id: u32,
    /// Transaction id (0 = none).
    pub tx_id: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Message {
    /// A message, refusing payloads over the limit.
    pub fn new(type_: u32, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Result<Self, Error> {
        if payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(Error::PayloadTooLarge {
                len: payload.len(),
                max: XENSTORE_PAYLOAD_MAX,
            });
        }
        Ok(Self {
            type_,
            req_id,
            tx_id,
            payload,
        })
    }

    /// Header and payload as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let header = XsdSockmsg {
            type_: self.type_,
            req_id: self.req_id,
            tx_id: self.tx_id,
            len: self.payload.len() as u32,
        };
        let mut out = Vec::with_capacity(HEADER_SIZE + self.payload.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Parses a header, refusing payload lengths over the limit before anything is allocated.
pub fn decode_header(bytes: &[u8; HEADER_SIZE]) -> Result<XsdSockmsg, Error> {
    let header = XsdSockmsg::read_from_bytes(bytes.as_slice())
        .map_err(|_| Error::Protocol("short header".into()))?;
    if header.len as usize > XENSTORE_PAYLOAD_MAX {
        return Err(Error::PayloadTooLarge {
            len: header.len as usize,
            max: XENSTORE_PAYLOAD_MAX,
        });
    }
    Ok(header)
}

/// Incremental decoder over a byte stream (for ring or socket readers that get partial data).
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Message>, Error> {
        let Some(head) = self.buf.first_chunk::<HEADER_SIZE>() else {
            return Ok(None);
        };
        let header = decode_header(head)?;
        let total = HEADER_SIZE + header.len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let payload = self
            .buf
            .get(HEADER_SIZE..total)
            .unwrap_or_default()
            .to_vec();
        self.buf.drain(..total);
        Ok(Some(Message {
            type_: header.type_,
            req_id: header.req_id,
            tx_id: header.tx_id,
            payload,
        }))
    }
}

/// Splits a payload into its NUL-terminated fields; a final unterminated field is kept.
pub fn split_fields(payload: &[u8]) -> Vec<&[u8]> {
    if payload.is_empty() {
        return Vec::new();
    }
    let mut fields: Vec<&[u8]> = payload.split(|&b| b == 0).collect();
    if payload.last() == Some(&0) {
        fields.pop();
    }
    fields
}

/// Joins fields, terminating each with a NUL.
pub fn join_fields<'a>(fields: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(f);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_reassembles_split_messages() {
        let a = Message::new(2, 7, 0, b"/local\0".to_vec()).unwrap();
        let b = Message::new(11, 8, 3, b"/x\0v".to_vec()).unwrap();
        let mut bytes = a.encode();
        bytes.extend(b.encode());
        let mut d = Decoder::default();
        for chunk in bytes.chunks(5) {
            d.push(chunk);
        }
        assert_eq!(d.next_message().unwrap(), Some(a));
        assert_eq!(d.next_message().unwrap(), Some(b));
        assert_eq!(d.next_message().unwrap(), None);
    }

    #[test]
    fn oversize_payload_is_refused_before_allocation() {
        let mut head = [0u8; HEADER_SIZE];
        head[12..16].copy_from_slice(&4097u32.to_le_bytes());
        assert!(matches!(
            decode_header(&head),
            Err(Error::PayloadTooLarge { len: 4097, .. })
        ));
        assert!(Message::new(11, 1, 0, vec![0; 4097]).is_err());
        assert!(Message::new(11, 1, 0, vec![0; 4096]).is_ok());
    }

    #[test]
    fn fields_split_and_join() {
        assert_eq!(split_fields(b"a\0bc\0"), vec![&b"a"[..], &b"bc"[..]]);
        assert_eq!(split_fields(b"/p\0value"), vec![&b"/p"[..], &b"value"[..]]);
        assert_eq!(split_fields(b""), Vec::<&[u8]>::new());
        assert_eq!(join_fields([&b"a"[..], &b"b"[..]]), b"a\0b\0");
    }
}
