//! wakafleet: a GitOps reconcile daemon for fleets of multi-tenant platform instances.
//!
//! Modules in reading order: the pure core first (no I/O, no clock), edges after.

pub mod diag;
pub mod model;
pub mod load;
pub mod validate;
pub mod policy;
pub mod backups;
pub mod plan;
pub mod parallel;
pub mod secret;

pub mod source;
pub mod store;
pub mod queue;
pub mod image;
pub mod driver;
pub mod jobs;
pub mod metrics;
pub mod daemon;
pub mod http;
