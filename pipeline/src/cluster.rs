//! Joining a Weir cluster: timely's own multi-process runtime, one process per line of a hosts file, the same
//! number of worker threads in each.
//!
//! Timely connects the processes itself when given `Config::Cluster`, but it waits for missing peers forever and
//! reports on stdout. Weir makes the connections here instead — the same convention as timely (a process dials the
//! processes listed before it and accepts those after it) — so that the wait is bounded and logged, and then hands
//! the sockets to timely (`initialize_networking_from_sockets`).
//!
//! Each connection starts with a [`Handshake`] both ways: a magic tag, the process index, the number of processes
//! and of workers per process. A connection that does not send one within [`HANDSHAKE_TIMEOUT`] — a port scanner,
//! a load balancer's probe, anything else — is logged and dropped, and the wait goes on; a peer whose cluster size
//! or `--workers` differ is refused with an error that names both (timely would fail later with an index error).
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
    #[error(
        "process {peer} at {from} runs a cluster of {peer_processes} processes with --workers {peer_workers}; this \
         process, {me}, a cluster of {processes} with --workers {workers}. Every process needs the same hosts list and \
         the same --workers"
    )]
    Mismatch {
        me: usize,
        processes: usize,
        workers: usize,
        peer: usize,
        from: String,
        peer_processes: usize,
        peer_workers: usize,
    },
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

    /// Connects to every peer, each running `workers` workers. The result has one socket per process, `None` at this
    /// process's own index.
    pub fn connect(&self, workers: usize) -> Result<Vec<Option<TcpStream>>, ClusterError> {
        let mine = Handshake { process: self.process, processes: self.processes(), workers };
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
        let (arrived_tx, arrived) = std::sync::mpsc::channel();
        let mut last_report = Instant::now();
        tracing::info!(process = me, processes = self.processes(), address = %self.addresses[me], "joining the cluster");
        loop {
            // Dial the processes before this one.
            for (peer, socket) in sockets.iter_mut().enumerate().take(me) {
                if socket.is_some() {
                    continue;
                }
                let Ok(mut stream) = TcpStream::connect(&self.addresses[peer]) else { continue };
                let address = &self.addresses[peer];
                match mine.send(&mut stream).and_then(|()| Handshake::receive_within(&mut stream, REPLY_TIMEOUT)) {
                    Ok(Some(theirs)) if theirs.process == peer => {
                        mine.check(&theirs, address)?;
                        stream.set_nodelay(true).map_err(ClusterError::Handshake)?;
                        tracing::info!(peer, %address, "connected to cluster peer");
                        *socket = Some(stream);
                    }
                    Ok(Some(theirs)) => tracing::warn!(
                        %address, expected = peer, found = theirs.process,
                        "the cluster address of one process answers as another; check the hosts list"
                    ),
                    Ok(None) | Err(_) => tracing::warn!(
                        %address, peer,
                        "what listens at a peer's cluster address is not a Weir cluster process (no handshake); retrying"
                    ),
                }
            }
            // Accept the processes after this one. Each connection's handshake is read on a thread of its own, so
            // that a silent stranger delays nobody.
            loop {
                match listener.accept() {
                    Ok((mut stream, from)) => {
                        let arrived = arrived_tx.clone();
                        std::thread::spawn(move || {
                            let theirs = stream.set_nonblocking(false).and_then(|()| Handshake::receive(&mut stream));
                            let _ = arrived.send((stream, from, theirs));
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(ClusterError::Handshake(e)),
                }
            }
            for (mut stream, from, theirs) in arrived.try_iter() {
                // Whatever goes wrong with one connection is that connection's problem: log it and go on.
                let theirs = match theirs {
                    Ok(Some(theirs)) => theirs,
                    Ok(None) | Err(_) => {
                        tracing::warn!(
                            %from,
                            "ignoring a connection to the cluster port that sent no Weir cluster handshake within \
                             {HANDSHAKE_TIMEOUT:?} (a port scanner or a probe?)"
                        );
                        continue;
                    }
                };
                // Answer first, so that a peer of another shape learns it too.
                let answered = mine.send(&mut stream).and_then(|()| stream.set_nodelay(true));
                mine.check(&theirs, &from.to_string())?;
                let peer = theirs.process;
                if peer <= me || sockets[peer].is_some() {
                    tracing::warn!(%from, peer, "ignoring a cluster connection with an unexpected process index");
                    continue;
                }
                if answered.is_err() {
                    tracing::warn!(%from, peer, "a cluster peer went away during the handshake");
                    continue;
                }
                tracing::info!(peer, %from, "cluster peer connected");
                sockets[peer] = Some(stream);
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
        let sockets = self.connect(threads)?;
        let hooks = timely::communication::Hooks::default();
        let local = ProcessBuilder::new_typed_vector(threads, hooks.refill.clone(), hooks.spill.clone());
        let (builders, guard) = initialize_networking_from_sockets(local, sockets, self.process, threads, hooks)
            .map_err(|e| ClusterError::Timely(format!("cannot start the cluster's network threads: {e}")))?;
        let builders = builders.into_iter().map(AllocatorBuilder::Tcp).collect();
        timely::execute::execute_from(builders, Box::new(guard), timely::WorkerConfig::default(), func)
            .map_err(ClusterError::Timely)
    }
}

/// How long a new connection has to send its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a dialing process waits for the answer to its handshake.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What each side of a cluster connection says first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handshake {
    process: usize,
    processes: usize,
    workers: usize,
}

impl Handshake {
    const MAGIC: [u8; 8] = *b"weir-tc1";
    const BYTES: usize = 8 + 3 * 8;

    fn send(&self, stream: &mut TcpStream) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(Self::BYTES);
        bytes.extend_from_slice(&Self::MAGIC);
        for n in [self.process, self.processes, self.workers] {
            bytes.extend_from_slice(&(n as u64).to_be_bytes());
        }
        stream.write_all(&bytes)
    }

    /// The other side's handshake; `None` if it sent something else, or nothing within [`HANDSHAKE_TIMEOUT`].
    fn receive(stream: &mut TcpStream) -> std::io::Result<Option<Handshake>> {
        Self::receive_within(stream, HANDSHAKE_TIMEOUT)
    }

    fn receive_within(stream: &mut TcpStream, timeout: Duration) -> std::io::Result<Option<Handshake>> {
        stream.set_read_timeout(Some(timeout))?;
        let mut bytes = [0u8; Self::BYTES];
        let read = stream.read_exact(&mut bytes);
        stream.set_read_timeout(None)?;
        if read.is_err() || bytes[..8] != Self::MAGIC {
            return Ok(None);
        }
        let n = |i: usize| {
            let word: [u8; 8] = bytes[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes");
            usize::try_from(u64::from_be_bytes(word)).unwrap_or(usize::MAX)
        };
        Ok(Some(Handshake { process: n(0), processes: n(1), workers: n(2) }))
    }

    /// Refuses a peer of another cluster shape: timely needs the same number of processes and workers everywhere.
    fn check(&self, theirs: &Handshake, from: &str) -> Result<(), ClusterError> {
        if (theirs.processes, theirs.workers) == (self.processes, self.workers) && theirs.process < self.processes {
            return Ok(());
        }
        Err(ClusterError::Mismatch {
            me: self.process,
            processes: self.processes,
            workers: self.workers,
            peer: theirs.process,
            from: from.to_owned(),
            peer_processes: theirs.processes,
            peer_workers: theirs.workers,
        })
    }
}

fn parse_hosts(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `n` loopback addresses for a test cluster, each free a moment ago and below the kernel's ephemeral port range.
///
/// A cluster's addresses are chosen before its processes start and reused across their restarts, so they must stay
/// free in between: a port from the ephemeral range (what `bind(":0")` and every outgoing connection are given) can
/// be taken meanwhile by another server's port-0 listener or by a connection's local end, and the process that owns
/// it then cannot join. Ports below that range are only ever taken by asking for them.
#[doc(hidden)]
pub fn free_addresses(n: usize) -> Vec<String> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000u32, u32::from(ephemeral_start.max(20_000)));
    // A per-process, per-call start so that concurrent tests spread out; each candidate is checked by binding it.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let mut seed = (std::process::id() ^ nanos ^ call.wrapping_mul(0x9E37_79B9)) as u64 | 1;
    let mut listeners = Vec::with_capacity(n);
    while listeners.len() < n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = low + (seed % u64::from(high - low)) as u32;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            listeners.push(l);
        }
    }
    listeners.iter().map(|l| l.local_addr().expect("a bound listener has an address").to_string()).collect()
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
        let e = c.connect(1).unwrap_err().to_string();
        assert!(e.contains("still missing process 0 at") && e.contains(&addresses[2]), "{e}");
    }

    /// Issue 17, 3: a connection that says nothing and closes (a port scanner, a probe) used to end the process;
    /// a stranger that sends garbage is dropped too, and the real peer still joins.
    #[test]
    fn strangers_on_the_cluster_port_are_dropped_and_the_peer_still_joins() {
        let addresses = free_addresses(2);
        let first =
            ClusterConfig { process: 0, addresses: addresses.clone(), connect_timeout: Duration::from_secs(20) };
        let waiting = std::thread::spawn(move || first.connect(2).map(|s| s.iter().filter(|s| s.is_some()).count()));
        std::thread::sleep(Duration::from_millis(200));
        drop(TcpStream::connect(&addresses[0]).unwrap());
        let mut garbage = TcpStream::connect(&addresses[0]).unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let _silent = TcpStream::connect(&addresses[0]).unwrap();
        let second = ClusterConfig { process: 1, addresses, connect_timeout: Duration::from_secs(20) };
        assert_eq!(second.connect(2).unwrap().iter().filter(|s| s.is_some()).count(), 1);
        assert_eq!(waiting.join().unwrap().unwrap(), 1, "process 0 is connected to process 1");
    }

    /// Issue 17, 3: processes started with different `--workers` are told so, with both numbers.
    #[test]
    fn a_peer_with_other_workers_is_refused_naming_both() {
        let addresses = free_addresses(2);
        let first =
            ClusterConfig { process: 0, addresses: addresses.clone(), connect_timeout: Duration::from_secs(20) };
        let waiting = std::thread::spawn(move || first.connect(2).map(|_| ()).unwrap_err().to_string());
        let second = ClusterConfig { process: 1, addresses, connect_timeout: Duration::from_secs(5) };
        let e = second.connect(3).unwrap_err().to_string();
        let theirs = waiting.join().unwrap();
        assert!(theirs.contains("--workers 3") && theirs.contains("--workers 2"), "{theirs}");
        assert!(e.contains("--workers 3") && e.contains("--workers 2"), "{e}");
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
