//! Work split over threads: large fleets are read and validated on every core.
//!
//! Only `std::thread::scope`: no runtime, no pool, no I/O. Results keep the input order, so
//! nothing downstream depends on how many threads ran.

/// Applies `work` to consecutive chunks of `items`, one chunk per thread, and returns the
/// results in order. Uses one thread (the caller's) unless each thread gets at least
/// `per_thread` items; at most 8 threads.
///
/// # Panics
/// Re-raises a panic of `work` on the caller's thread.
pub fn map_chunks<T: Sync, R: Send>(
    items: &[T],
    per_thread: usize,
    work: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    map_chunks_on(cores.min(items.len() / per_thread.max(1)), items, work)
}

/// [`map_chunks`] on exactly `threads` threads (at least one).
pub fn map_chunks_on<T: Sync, R: Send>(
    threads: usize,
    items: &[T],
    work: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    if threads <= 1 || items.len() < 2 {
        return vec![work(items)];
    }
    let chunk = items.len().div_ceil(threads);
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|chunk| scope.spawn(move || work(chunk)))
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_input_order_whatever_the_threads() {
        let items: Vec<u32> = (0..1_000).collect();
        let one: Vec<u32> = map_chunks_on(1, &items, <[u32]>::to_vec).concat();
        assert_eq!(one, items);
        for threads in [2, 3, 7] {
            let chunks = map_chunks_on(threads, &items, <[u32]>::to_vec);
            assert_eq!(chunks.len(), threads);
            assert_eq!(chunks.concat(), items);
        }
    }
}
