//! wakafleet: a GitOps reconcile daemon for fleets of multi-tenant platform instances.
//!
//! Modules in reading order: the pure core first (no I/O, no clock), edges after.

pub mod diag;
pub mod load;
pub mod model;
pub mod parallel;
pub mod validate;

pub mod source;
