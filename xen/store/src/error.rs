//! Errors: the errno names xenstored answers with, and the client's own failures.

use std::fmt;

/// An error name a xenstored sends in an `XS_ERROR` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XsErrno {
    /// Invalid argument.
    EINVAL,
    /// Permission denied.
    EACCES,
    /// Node exists.
    EEXIST,
    /// Is a directory.
    EISDIR,
    /// No such node.
    ENOENT,
    /// Out of memory.
    ENOMEM,
    /// Quota exceeded.
    ENOSPC,
    /// I/O error.
    EIO,
    /// Directory not empty.
    ENOTEMPTY,
    /// Operation not supported.
    ENOSYS,
    /// Read-only.
    EROFS,
    /// Busy.
    EBUSY,
    /// Transaction conflict: retry.
    EAGAIN,
    /// Already connected.
    EISCONN,
    /// Too big.
    E2BIG,
    /// Operation not permitted.
    EPERM,
}

const ALL: [XsErrno; 16] = [
    XsErrno::EINVAL,
    XsErrno::EACCES,
    XsErrno::EEXIST,
    XsErrno::EISDIR,
    XsErrno::ENOENT,
    XsErrno::ENOMEM,
    XsErrno::ENOSPC,
    XsErrno::EIO,
    XsErrno::ENOTEMPTY,
    XsErrno::ENOSYS,
    XsErrno::EROFS,
    XsErrno::EBUSY,
    XsErrno::EAGAIN,
    XsErrno::EISCONN,
    XsErrno::E2BIG,
    XsErrno::EPERM,
];

impl XsErrno {
    /// The wire name (`"ENOENT"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::EINVAL => "EINVAL",
            Self::EACCES => "EACCES",
            Self::EEXIST => "EEXIST",
            Self::EISDIR => "EISDIR",
            Self::ENOENT => "ENOENT",
            Self::ENOMEM => "ENOMEM",
            Self::ENOSPC => "ENOSPC",
            Self::EIO => "EIO",
            Self::ENOTEMPTY => "ENOTEMPTY",
            Self::ENOSYS => "ENOSYS",
            Self::EROFS => "EROFS",
            Self::EBUSY => "EBUSY",
            Self::EAGAIN => "EAGAIN",
            Self::EISCONN => "EISCONN",
            Self::E2BIG => "E2BIG",
            Self::EPERM => "EPERM",
        }
    }

    /// Parses a wire name; unknown names are `None` (the caller reports them as `EIO`).
    pub fn from_name(name: &str) -> Option<Self> {
        ALL.iter().copied().find(|e| e.name() == name)
    }

    /// The Linux errno value.
    pub fn errno(self) -> i32 {
        match self {
            Self::EINVAL => 22,
            Self::EACCES => 13,
            Self::EEXIST => 17,
            Self::EISDIR => 21,
            Self::ENOENT => 2,
            Self::ENOMEM => 12,
            Self::ENOSPC => 28,
            Self::EIO => 5,
            Self::ENOTEMPTY => 39,
            Self::ENOSYS => 38,
            Self::EROFS => 30,
            Self::EBUSY => 16,
            Self::EAGAIN => 11,
            Self::EISCONN => 106,
            Self::E2BIG => 7,
            Self::EPERM => 1,
        }
    }

    /// A short description for people.
    pub fn describe(self) -> &'static str {
        match self {
            Self::EINVAL => "invalid argument",
            Self::EACCES => "permission denied",
            Self::EEXIST => "node already exists",
            Self::EISDIR => "is a directory",
            Self::ENOENT => "no such node",
            Self::ENOMEM => "out of memory",
            Self::ENOSPC => "quota exceeded",
            Self::EIO => "I/O error",
            Self::ENOTEMPTY => "directory not empty",
            Self::ENOSYS => "operation not supported",
            Self::EROFS => "read-only",
            Self::EBUSY => "busy",
            Self::EAGAIN => "transaction conflict, try again",
            Self::EISCONN => "already connected",
            Self::E2BIG => "argument too big",
            Self::EPERM => "operation not permitted",
        }
    }
}

impl fmt::Display for XsErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.describe())
    }
}

/// Errors of the xenstore client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// xenstored refused the operation.
    #[error("xenstore {op} {path:?}: {errno}")]
    Xs {
        /// The refusal.
        errno: XsErrno,
        /// The operation (`"read"`, `"write"`, ...).
        op: &'static str,
        /// The path it concerned (empty when none).
        path: String,
    },
    /// The path is not a valid xenstore path.
    #[error("invalid xenstore path {path:?}: {reason}")]
    InvalidPath {
        /// The path.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// The request would exceed `XENSTORE_PAYLOAD_MAX`.
    #[error("xenstore payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Bytes requested.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer broke the protocol (bad framing, oversize payload, unexpected reply).
    #[error("xenstore protocol error: {0}")]
    Protocol(String),
    /// The connection is closed.
    #[error("xenstore connection closed")]
    Closed,
    /// A transaction kept conflicting.
    #[error("xenstore transaction still conflicting after {0} attempts")]
    TooManyRetries(u32),
    /// Opening or using the transport failed.
    #[error("xenstore connection to {target}: {source}")]
    Io {
        /// The socket or device.
        target: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The xenstored error name, if this is a refusal.
    pub fn errno(&self) -> Option<XsErrno> {
        match self {
            Self::Xs { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Whether xenstored answered `ENOENT`.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(XsErrno::ENOENT)
    }

    /// Whether xenstored answered `EAGAIN` (transaction conflict).
    pub fn is_again(&self) -> bool {
        self.errno() == Some(XsErrno::EAGAIN)
    }
}
