//! Joining a Weir cluster: timely's own multi-process runtime, one process per line of a hosts file, the same
//! number of worker threads in each.
//!
//! Timely connects the processes itself when given `Config::Cluster`, but it waits for missing peers forever and
//! reports on stdout. Weir makes the connections here instead — the same convention as timely (a process dials the
//! processes listed before it and accepts those after it; each side first sends its process index) — so that the
//! wait is bounded and logged, and then hands the sockets to timely (`initialize_networking_from_sockets`).
//!
//! A timely cluster stops as a whole: when one process dies, the others' dataflows fail. Weir then exits (see
//! `weir serve`), and the cluster is restarted; every process recovers from its own write-ahead log.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where this process sits in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This process's index: its line in the hosts file, from 0.
    pub process: usize,
    /// `host:port` of every process's timely connections, in process order.
    pub addresses: Vec<String>,
    /// How long to wait for the peers to come up before giving up.
    pub connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the cluster hosts file {path}: {source}")]
    HostsFile { path: PathBuf, source: std::io::Error },
    #[error("the cluster hosts file {path} lists no process; write one `host:port` per line")]
    NoHosts { path: PathBuf },
    #[error("--process {process} is out of range: {path} lists {processes} processes (0 to {last})", last = processes - 1)]
    ProcessOutOfRange { process: usize, processes: usize, path: PathBuf },
    #[error("cannot listen for cluster peers on {address}: {source}")]
    Bind { address: String, source: std::io::Error },
    #[error(
        "cluster peers did not connect within {waited:?} (--cluster-connect-timeout): still missing {missing}. Start \
         every process of the hosts file"
    )]
    PeersMissing { waited: Duration, missing: String },
    #[error("a cluster connection failed during the handshake: {0}")]
    Handshake(std::io::Error),
    #[error("{0}")]
    Timely(String),
}

impl ClusterConfig {
    /// Reads a hosts file: one `host:port` per line; blank lines and `#` comments are ignored.
    pub fn from_hosts_file(path: &Path, process: usize, connect_timeout: Duration) -> Result<Self, ClusterError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ClusterError::HostsFile { path: path.to_path_buf(), source })?;
        Self::parse(&text, process, connect_timeout, path)
    }

    /// The same from the text itself (e.g. `--cluster-hosts`, one `host:port` per line).
    pub fn from_hosts(text: &str, process: usize, connect_timeout: Duration) -> Result<Self, ClusterError> {
        Self::parse(text, process, connect_timeout, Path::new("--cluster-hosts"))
    }

    fn parse(text: &str, process: usize, connect_timeout: Duration, source: &Path) -> Result<Self, ClusterError> {
        let addresses = parse_hosts(text);
        if addresses.is_empty() {
            return Err(ClusterError::NoHosts { path: source.to_path_buf() });
        }
        if process >= addresses.len() {
            return Err(ClusterError::ProcessOutOfRange {
                process,
                processes: addresses.len(),
                path: source.to_path_buf(),
            });
        }
        Ok(ClusterConfig { process, addresses, connect_timeout })
    }

    pub fn processes(&self) -> usize {
        self.addresses.len()
    }

    /// Connects to every peer. The result has one socket per process, `None` at this process's own index.
    pub fn connect(&self) -> Result<Vec<Option<TcpStream>>, ClusterError> {
        let deadline = Instant::now() + self.connect_timeout;
        let me = self.process;
        // The address may still be held for a moment (this process's previous run exiting, or a connection that
        // happened to get it as its local port): retry until the connect deadline before giving up.
        let listener = loop {
            match TcpListener::bind(&self.addresses[me]) {
                Ok(listener) => break listener,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    tracing::warn!(address = %self.addresses[me], "the cluster address is in use; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(source) => return Err(ClusterError::Bind { address: self.addresses[me].clone(), source }),
            }
        };
        listener.set_nonblocking(true).map_err(ClusterError::Handshake)?;
        let mut sockets: Vec<Option<TcpStream>> = (0..self.processes()).map(|_| None).collect();
        let mut last_report = Instant::now();
        tracing::info!(process = me, processes = self.processes(), address = %self.addresses[me], "joining the cluster");
        loop {
            // Dial the processes before this one.
            for (peer, socket) in sockets.iter_mut().enumerate().take(me) {
                if socket.is_none()
                    && let Ok(mut stream) = TcpStream::connect(&self.addresses[peer])
                {
                    stream.set_nodelay(true).map_err(ClusterError::Handshake)?;
                    stream.write_all(&(me as u64).to_be_bytes()).map_err(ClusterError::Handshake)?;
                    tracing::info!(peer, address = %self.addresses[peer], "connected to cluster peer");
                    *socket = Some(stream);
                }
            }
            // Accept the processes after this one.
            loop {
                match listener.accept() {
                    Ok((mut stream, from)) => {
                        stream.set_nonblocking(false).map_err(ClusterError::Handshake)?;
                        stream.set_nodelay(true).map_err(ClusterError::Handshake)?;
                        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(ClusterError::Handshake)?;
                        let mut index = [0u8; 8];
                        stream.read_exact(&mut index).map_err(ClusterError::Handshake)?;
                        stream.set_read_timeout(None).map_err(ClusterError::Handshake)?;
                        let peer = u64::from_be_bytes(index) as usize;
                        if peer <= me || peer >= self.processes() {
                            tracing::warn!(%from, peer, "ignoring a cluster connection with an unexpected process index");
                            continue;
                        }
                        tracing::info!(peer, %from, "cluster peer connected");
                        sockets[peer] = Some(stream);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(ClusterError::Handshake(e)),
                }
            }
            let missing: Vec<String> = (0..self.processes())
                .filter(|&p| p != me && sockets[p].is_none())
                .map(|p| format!("process {p} at {}", self.addresses[p]))
                .collect();
            if missing.is_empty() {
                tracing::info!(processes = self.processes(), "all cluster peers connected");
                return Ok(sockets);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::PeersMissing { waited: self.connect_timeout, missing: missing.join(", ") });
            }
            if last_report.elapsed() >= Duration::from_secs(2) {
                tracing::info!(missing = %missing.join(", "), "waiting for cluster peers");
                last_report = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts timely workers over the cluster: `threads` per process, `func` on each.
    pub fn execute<F>(
        &self,
        threads: usize,
        func: F,
    ) -> Result<timely::communication::initialize::WorkerGuards<()>, ClusterError>
    where
        F: Fn(&mut timely::worker::Worker) + Send + Sync + 'static,
    {
        use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
        use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
        let sockets = self.connect()?;
        let hooks = timely::communication::Hooks::default();
        let local = ProcessBuilder::new_typed_vector(threads, hooks.refill.clone(), hooks.spill.clone());
        let (builders, guard) = initialize_networking_from_sockets(local, sockets, self.process, threads, hooks)
            .map_err(|e| ClusterError::Timely(format!("cannot start the cluster's network threads: {e}")))?;
        let builders = builders.into_iter().map(AllocatorBuilder::Tcp).collect();
        timely::execute::execute_from(builders, Box::new(guard), timely::WorkerConfig::default(), func)
            .map_err(ClusterError::Timely)
    }
}

fn parse_hosts(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `n` loopback addresses that were free a moment ago, for tests.
#[cfg(test)]
pub(crate) fn free_addresses(n: usize) -> Vec<String> {
    let listeners: Vec<_> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_files_are_read_line_by_line_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.txt");
        std::fs::write(&path, "# the cluster\n127.0.0.1:7000\n\n127.0.0.1:7001  # second\n").unwrap();
        let c = ClusterConfig::from_hosts_file(&path, 1, Duration::from_secs(1)).unwrap();
        assert_eq!(c.addresses, vec!["127.0.0.1:7000", "127.0.0.1:7001"]);
        let e = ClusterConfig::from_hosts_file(&path, 2, Duration::from_secs(1)).unwrap_err().to_string();
        assert!(e.contains("--process 2 is out of range") && e.contains("0 to 1"), "{e}");
        std::fs::write(&path, "# nobody\n").unwrap();
        assert!(matches!(ClusterConfig::from_hosts_file(&path, 0, Duration::ZERO), Err(ClusterError::NoHosts { .. })));
        let inline = ClusterConfig::from_hosts("a:1\nb:2\nc:3", 2, Duration::ZERO).unwrap();
        assert_eq!((inline.process, inline.processes()), (2, 3));
        let e = ClusterConfig::from_hosts("a:1", 1, Duration::ZERO).unwrap_err().to_string();
        assert!(e.contains("--cluster-hosts lists 1 processes"), "{e}");
    }

    #[test]
    fn a_process_whose_peers_never_come_gives_up_naming_them() {
        let addresses = free_addresses(3);
        let c = ClusterConfig { process: 1, addresses: addresses.clone(), connect_timeout: Duration::from_millis(300) };
        let e = c.connect().unwrap_err().to_string();
        assert!(e.contains("still missing process 0 at") && e.contains(&addresses[2]), "{e}");
    }

    #[test]
    fn three_processes_connect_and_exchange_data_through_timely() {
        use std::sync::{Arc, Mutex};
        use timely::dataflow::operators::{Exchange, Inspect, Probe, ToStream};
        let addresses = free_addresses(3);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handles: Vec<_> = (0..3)
            .map(|process| {
                let c =
                    ClusterConfig { process, addresses: addresses.clone(), connect_timeout: Duration::from_secs(20) };
                let seen = seen.clone();
                // The last process starts late: the others wait for it.
                std::thread::spawn(move || {
                    if process == 2 {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    let guards = c
                        .execute(2, move |worker| {
                            let index = worker.index();
                            let seen = seen.clone();
                            worker.dataflow::<u64, _, _>(|scope| {
                                let numbers: timely::dataflow::Stream<'_, u64, Vec<u64>> =
                                    (0..10u64).map(move |i| i * 100 + index as u64).to_stream(scope);
                                numbers
                                    .exchange(|x: &u64| *x)
                                    .inspect(move |x: &u64| seen.lock().unwrap().push((index, *x)))
                                    .probe();
                            });
                        })
                        .unwrap();
                    drop(guards);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 60, "six workers each sent ten numbers");
        assert!(seen.iter().all(|(worker, x)| (*x % 6) as usize == *worker), "each number at its owner: {seen:?}");
    }
}
