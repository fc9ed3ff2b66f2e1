//! Answering queries across every worker of the cluster, through a small dataflow of its own.
//!
//! The process that receives a query feeds it into the query input; it is broadcast to every worker (in every
//! process), each answers from its own arrangements once it has processed the requested log position, and the
//! fragments are exchanged back to the asking worker, which merges them once all have arrived. With one process
//! this is the same path, just without the network.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Capability, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle, Scope};
use tokio::sync::oneshot;
use weir_operators::Time;

use super::changes::RecentChanges;
use super::positions::Positions;
use super::query::{Answer, ArchiveState, Query, WorkerTraces};
use super::stopping::StopBarrier;

/// A query on its way to every worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryRequest {
    /// Unique on the asking worker.
    pub id: u64,
    /// The asking worker (global index), where the fragments go.
    pub requester: usize,
    /// Answer once `process`'s log has been processed through `after`.
    pub process: u32,
    pub after: u64,
    /// How long the asker waits, from when it asked. A duration, not an instant: processes' clocks differ, so each
    /// worker keeps a request for this long after it receives it, by its own monotonic clock.
    pub wait_micros: u64,
    pub query: Query,
}

/// The longest a worker keeps a request (a day: a bound that no `--read-wait` reaches, and that an `Instant` can add).
const MAX_WAIT_MICROS: u64 = 86_400_000_000;

/// One worker's part of an answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fragment {
    pub id: u64,
    pub requester: usize,
    pub answer: Answer,
}

/// Queries this worker asked, waiting for their fragments.
#[derive(Default)]
pub struct Waiting {
    replies: HashMap<u64, (oneshot::Sender<Answer>, Vec<Answer>, Instant)>,
}

impl Waiting {
    /// Waits for the fragments of query `id` until `deadline` (this process's monotonic clock).
    pub fn insert(&mut self, id: u64, reply: oneshot::Sender<Answer>, deadline: Instant) {
        self.replies.insert(id, (reply, Vec::new(), deadline));
    }

    /// Drops queries whose asker has given up.
    pub fn expire(&mut self, now: Instant) {
        self.replies.retain(|_, (reply, _, deadline)| *deadline >= now && !reply.is_closed());
    }
}

/// What the archive of this process says about itself, through the hooks the archiver registers.
pub trait ArchiveControl: Send + Sync {
    /// The last log position whose readings are committed to the archive.
    fn committed(&self) -> u64;
    /// Asks for a flush of everything read, as soon as the log has been read through `through`.
    fn request_flush(&self, through: u64);
    /// Whether the archiver has started (loaded what it needs from the archive).
    fn started(&self) -> bool;
}

/// Answers [`Query::Archive`] at a process's first worker (the others answer with nothing).
pub struct ArchiveAnswerer {
    pub process: u32,
    pub first_worker: bool,
    pub durable: tokio::sync::watch::Receiver<u64>,
    /// Set once the archiver runs.
    pub control: Arc<OnceLock<Arc<dyn ArchiveControl>>>,
    /// The statistics have loaded the archive once this process's log is processed through here.
    pub start_through: u64,
}

impl ArchiveAnswerer {
    fn answer(&self, flush: bool, positions: &Positions) -> Answer {
        if !self.first_worker {
            return Answer::Archive(Vec::new());
        }
        let durable = *self.durable.borrow();
        let control = self.control.get();
        if flush && let Some(c) = control {
            c.request_flush(durable);
        }
        Answer::Archive(vec![ArchiveState {
            process: self.process,
            durable,
            committed: control.map_or(0, |c| c.committed()),
            loaded: control.is_some_and(|c| c.started()) && positions.processed(self.process) >= self.start_through,
        }])
    }
}

/// Builds the query dataflow in `scope`; returns its input (fed by the asking worker) and its probe.
pub fn query_dataflow(
    scope: Scope<'_, Time>,
    traces: Rc<RefCell<WorkerTraces>>,
    positions: Rc<RefCell<Positions>>,
    waiting: Rc<RefCell<Waiting>>,
    archive: ArchiveAnswerer,
    changes: Rc<RefCell<RecentChanges>>,
    stopping: Arc<StopBarrier>,
) -> (InputHandleVec<Time, QueryRequest>, ProbeHandle<Time>) {
    let mut input = InputHandleVec::new();
    let probe = ProbeHandle::new();
    let peers = scope.peers();
    let requests = input.to_stream(scope).broadcast();
    let activator_scope = scope;
    let fragments = requests.unary::<CapacityContainerBuilder<Vec<Fragment>>, _, _, _>(
        Pipeline,
        "AnswerQueries",
        move |_capability, info| {
            let activator = activator_scope.activator_for(info.address);
            // Each request until its deadline by this worker's clock: received + the asker's wait.
            let mut pending: Vec<(Capability<Time>, QueryRequest, Instant)> = Vec::new();
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let received = Instant::now();
                    for batch in data {
                        for request in batch.drain(..) {
                            let request: QueryRequest = request;
                            if let Some(cap) = cap.retain_least(output.output_index()) {
                                let wait = Duration::from_micros(request.wait_micros.min(MAX_WAIT_MICROS));
                                let deadline = received + wait;
                                pending.push((cap, request, deadline));
                            }
                        }
                    }
                });
                let now = Instant::now();
                let positions = positions.borrow();
                pending.retain(|(cap, request, deadline)| {
                    if now > *deadline {
                        return false;
                    }
                    if positions.processed(request.process) < request.after {
                        return true;
                    }
                    let answer = match request.query {
                        Query::Archive { flush } => archive.answer(flush, &positions),
                        Query::Stopping { process } => {
                            stopping.announce(process);
                            Answer::Stopping
                        }
                        Query::Changes { since, filter } => {
                            let changed = changes.borrow_mut().changed_since(since, &filter);
                            let windows = traces.borrow_mut().windows_at(&changed.keys);
                            Answer::Changes { windows, through: changed.through, resync: changed.resync }
                        }
                        ref query => traces.borrow_mut().answer(query),
                    };
                    let fragment = Fragment { id: request.id, requester: request.requester, answer };
                    output.session(cap).give(fragment);
                    false
                });
                if !pending.is_empty() {
                    activator.activate_after(Duration::from_millis(1));
                }
            }
        },
    );
    fragments
        .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Exchange::new(|f: &Fragment| f.requester as u64),
            "GatherFragments",
            move |_capability, _info| {
                move |input, _output| {
                    input.for_each(|_cap, data| {
                        let mut waiting = waiting.borrow_mut();
                        for fragment in data.drain(..) {
                            let Some((_, parts, _)) = waiting.replies.get_mut(&fragment.id) else { continue };
                            parts.push(fragment.answer);
                            if parts.len() == peers {
                                let (reply, parts, _) = waiting.replies.remove(&fragment.id).expect("present");
                                if let Some(answer) = Answer::merge(parts) {
                                    let _ = reply.send(answer);
                                }
                            }
                        }
                    });
                }
            },
        )
        .probe_with(&probe);
    (input, probe)
}
