//! Where SQL runs: threads of its own, never the threads that serve requests.
//!
//! Why: a query is arbitrary work. Planning recurses over the query's expression tree (a chain of 1 000 `OR`s is
//! 1 000 frames deep), and an expression such as `levenshtein(repeat('a', 60000), …)` computes for seconds without
//! yielding. On the serving runtime the first overflowed a 2 MiB worker stack and killed the process, the second
//! stalled `/healthz` and ingest. Here each query — parsing, checks, planning and driving its execution — runs on
//! one of `threads` query threads with a [`STACK_BYTES`] stack (reserved, not committed: only the pages used count);
//! the asker waits for the answer with the query's deadline and answers on time even while a query's thread is
//! still busy. At most `queue` queries wait for a thread; more are refused at once (the caller answers 503).
//!
//! A query's partitions (DataFusion's `target_partitions` streams, which it spawns as tasks) run on a pool of
//! `parallelism` workers shared by the queries (one multi-threaded tokio runtime, the same stacks): a single query
//! uses every core it is given. (Each query thread used to drive a single-threaded runtime of its own, so a query's
//! partitions took turns on one core: on two cores that made grouping queries 1.5× slower than they are now.)
//!
//! All these threads run at a lower CPU priority (`nice`, on Linux): where cores are short, ingest and the live
//! statistics go first and queries take what is left (under a flood of slow queries the statistics fell seconds
//! behind, as two SQL threads took the same share of two cores as the dataflow). Threads a query starts inherit it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::priority::lower_priority;

/// The stack of a SQL thread. Deep enough for the deepest query the checks let through (see `MAX_NESTING`).
pub const STACK_BYTES: usize = 256 << 20;

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A pool of SQL threads; cheap to clone (clones share the threads). The threads end when the last clone is dropped.
#[derive(Clone)]
pub struct SqlThreads {
    jobs: mpsc::Sender<Job>,
    threads: usize,
    parallelism: usize,
}

/// The pool's queue is full.
#[derive(Debug, thiserror::Error)]
#[error("{waiting} SQL queries are already waiting for a thread (--sql-concurrency {threads}); retry shortly")]
pub struct Busy {
    pub waiting: usize,
    pub threads: usize,
}

/// The SQL threads could not be started (the system refused a thread).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the SQL threads: {0}; lower --sql-concurrency or --sql-parallelism, or raise the thread limit")]
pub struct StartError(#[from] std::io::Error);

impl SqlThreads {
    /// Starts `threads` query threads and `parallelism` workers for their partitions (0: one per core), all at a
    /// CPU priority lowered by `nice` (0–19); at most `queue` queries wait for a thread.
    pub fn start(threads: usize, parallelism: usize, queue: usize, nice: u8) -> Result<SqlThreads, StartError> {
        let threads = threads.max(1);
        let parallelism = match parallelism {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let workers = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(parallelism)
            .thread_name("weir-sql-worker")
            .thread_stack_size(STACK_BYTES)
            .on_thread_start(move || lower_priority(nice, "a SQL thread"))
            .enable_all()
            .build()?;
        let workers = Arc::new(workers);
        let (jobs, receiver) = mpsc::channel::<Job>(queue.max(1));
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        for i in 0..threads {
            let (receiver, workers) = (receiver.clone(), workers.clone());
            std::thread::Builder::new().name(format!("weir-sql-{i}")).stack_size(STACK_BYTES).spawn(move || {
                lower_priority(nice, "a SQL thread");
                // The query's own future runs here (this thread's stack); what it spawns runs on the workers.
                while let Some(job) = workers.block_on(async { receiver.lock().await.recv().await }) {
                    // A panic ends the query (its asker hears "failed on its thread"), not the thread.
                    let ran =
                        workers.block_on(futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(job())));
                    if ran.is_err() {
                        tracing::error!("a SQL query panicked; its thread goes on");
                    }
                }
                // The last query thread to end takes the workers down, without waiting for a query still running.
                if let Ok(workers) = Arc::try_unwrap(workers) {
                    workers.shutdown_background();
                }
            })?;
        }
        Ok(SqlThreads { jobs, threads, parallelism })
    }

    /// How many workers run the queries' partitions: what a query's `target_partitions` should be.
    pub fn parallelism(&self) -> usize {
        self.parallelism
    }

    /// Runs `work` on a SQL thread; its result comes back through the returned receiver (closed if the work
    /// panicked). Refused at once when the queue is full.
    pub fn run<T, F, W>(&self, work: W) -> Result<tokio::sync::oneshot::Receiver<T>, Busy>
    where
        T: Send + 'static,
        F: Future<Output = T> + 'static,
        W: FnOnce() -> F + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _ = answer.send(work().await);
            })
        });
        self.jobs
            .try_send(job)
            .map_err(|_| Busy { waiting: self.jobs.max_capacity() - self.jobs.capacity(), threads: self.threads })?;
        Ok(answered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A recursion far deeper than a 2 MiB stack holds runs on a SQL thread.
    #[test]
    fn a_deep_recursion_fits_the_stack_of_a_sql_thread() {
        fn depth(n: u64) -> u64 {
            let pad = std::hint::black_box([0u8; 512]);
            if n == 0 { u64::from(pad[0]) } else { 1 + depth(n - 1) }
        }
        let threads = SqlThreads::start(1, 1, 4, 0).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let answer = threads.run(|| async { depth(100_000) }).unwrap();
        assert_eq!(rt.block_on(answer).unwrap(), 100_000);
    }

    /// A query's partitions run side by side: two tasks that each wait for the other (a barrier, which blocks its
    /// thread) finish only on two workers at once. On one thread, as before, they never would.
    #[test]
    fn one_query_runs_its_partitions_on_several_workers_at_once() {
        let threads = SqlThreads::start(1, 2, 4, 0).unwrap();
        assert_eq!(threads.parallelism(), 2);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let answer = threads
            .run(|| async {
                let barrier = Arc::new(std::sync::Barrier::new(2));
                let partition =
                    |barrier: Arc<std::sync::Barrier>| tokio::spawn(async move { barrier.wait().is_leader() });
                let (a, b) = (partition(barrier.clone()), partition(barrier));
                a.await.unwrap() ^ b.await.unwrap()
            })
            .unwrap();
        let ran = rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(20), answer).await });
        assert!(ran.expect("both partitions ran at once").unwrap(), "one of the two led the barrier");
    }

    #[test]
    fn a_panicking_query_ends_but_its_thread_goes_on() {
        let threads = SqlThreads::start(1, 1, 4, 0).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let failed = threads.run(|| async { panic!("a query's bug") }).unwrap();
        let answer: Result<(), _> = rt.block_on(failed);
        assert!(answer.is_err(), "the asker hears of it");
        let next = threads.run(|| async { 7 }).unwrap();
        assert_eq!(rt.block_on(next).unwrap(), 7, "the one thread still runs queries");
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let threads = SqlThreads::start(1, 1, 1, 0).unwrap();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let hold = |released: Arc<Mutex<std::sync::mpsc::Receiver<()>>>| {
            move || async move {
                let _ = released.lock().unwrap().recv();
            }
        };
        let first = threads.run(hold(released.clone())).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let second = threads.run(hold(released.clone())).unwrap();
        assert!(threads.run(|| async {}).is_err(), "a third waits for nobody: refused");
        release.send(()).unwrap();
        release.send(()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            first.await.unwrap();
            second.await.unwrap();
        });
    }

    /// Queries run below the caller's CPU priority by `nice`, and so do threads they start.
    #[cfg(target_os = "linux")]
    #[test]
    fn queries_run_at_a_lower_cpu_priority() {
        fn own_nice() -> i32 {
            // SAFETY: reads the calling thread's nice value.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) }
        }
        let mine = own_nice();
        let threads = SqlThreads::start(1, 1, 4, 5).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let answer = threads
            .run(|| async {
                let partition = tokio::spawn(async { own_nice() }).await.unwrap();
                (own_nice(), std::thread::spawn(own_nice).join().unwrap(), partition)
            })
            .unwrap();
        let expected = (mine + 5).min(19);
        assert_eq!(rt.block_on(answer).unwrap(), (expected, expected, expected), "query thread, its threads, workers");
    }
}
