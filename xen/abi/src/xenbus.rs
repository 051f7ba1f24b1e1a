//! `xen/include/public/io/xenbus.h`: the XenBus device states both ends write to `state`.

use core::fmt;

/// A XenBus state, as written (in decimal) to a device directory's `state` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum XenbusState {
    /// `XenbusStateUnknown`.
    Unknown = 0,
    /// `XenbusStateInitialising`.
    Initialising = 1,
    /// `XenbusStateInitWait`: the backend has written its features and waits for the frontend.
    InitWait = 2,
    /// `XenbusStateInitialised`: the frontend has written its ring details.
    Initialised = 3,
    /// `XenbusStateConnected`.
    Connected = 4,
    /// `XenbusStateClosing`.
    Closing = 5,
    /// `XenbusStateClosed`.
    Closed = 6,
    /// `XenbusStateReconfiguring`.
    Reconfiguring = 7,
    /// `XenbusStateReconfigured`.
    Reconfigured = 8,
}

impl XenbusState {
    /// The state for a number, or `None` for a value no state has.
    pub fn from_number(n: u32) -> Option<Self> {
        Some(match n {
            0 => Self::Unknown,
            1 => Self::Initialising,
            2 => Self::InitWait,
            3 => Self::Initialised,
            4 => Self::Connected,
            5 => Self::Closing,
            6 => Self::Closed,
            7 => Self::Reconfiguring,
            8 => Self::Reconfigured,
            _ => return None,
        })
    }

    /// Parses the text of a `state` key (decimal, surrounding whitespace allowed).
    pub fn parse(text: &[u8]) -> Option<Self> {
        let s = core::str::from_utf8(text).ok()?;
        Self::from_number(s.trim().parse().ok()?)
    }

    /// The decimal text written to xenstore.
    pub fn as_text(self) -> &'static str {
        match self {
            Self::Unknown => "0",
            Self::Initialising => "1",
            Self::InitWait => "2",
            Self::Initialised => "3",
            Self::Connected => "4",
            Self::Closing => "5",
            Self::Closed => "6",
            Self::Reconfiguring => "7",
            Self::Reconfigured => "8",
        }
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
