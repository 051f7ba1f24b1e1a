//! demu: a discrete device emulator for a vGPU. It registers its own ioreq server for one HVM
//! guest ([`ioreq`]), claims exactly one PCI function's configuration space ([`pci`]), ports
//! and MMIO, and answers every trapped access itself with a bochs-compatible display device
//! ([`bochs`]) whose screen it can capture ([`display`]).
//!
//! The same code runs on real Xen (`xen_devicemodel::linux::Privcmd`, `/dev/xen/evtchn`) and
//! on the simulated host (`xen_sim::SimDomain::device_model`).

pub mod bench;
pub mod bochs;
pub mod cli;
pub mod display;
pub mod engine;
pub mod ioreq;
pub mod mux;
pub mod pci;
pub mod runner;
pub mod serve;
pub mod vnc;
