//! The daemon: the reconcile loop of `wakafleet run`, which ties source, store, queue and
//! driver together, and the election of the one process among several that plans and
//! enqueues (`leader`).

pub mod leader;
