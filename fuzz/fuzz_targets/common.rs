//! What several targets share: a runtime for async code under test.

/// Runs `future` to completion on a fresh current-thread runtime with timers.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
        .block_on(future)
}
