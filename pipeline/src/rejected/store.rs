//! The directory of segments: opening (with recovery), appending a request's records with one write, rotation,
//! retention, the size cap, and reading.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::decode::LineErrorKind;

use super::record::{self, KeptLine, Rejection};
use super::segment::{self, Corruption, HEADER_BYTES};
use super::{Damage, Origin, Recovery, RejectedError, RejectedOptions};

/// The record of rejected lines in one directory. Appends from many requests at once are serialized by one lock,
/// taken once per request; reads take it only to list the segments.
pub struct RejectedStore {
    dir: PathBuf,
    options: RejectedOptions,
    state: Mutex<State>,
}

/// One segment file as the store tracks it.
#[derive(Debug, Clone)]
struct Segment {
    path: PathBuf,
    bytes: u64,
    /// The newest record's receive time (µs); a segment older than the retention as a whole is deleted.
    newest_micros: i64,
}

struct State {
    /// Oldest first; while `active` is open it is the last one's file.
    segments: VecDeque<Segment>,
    active: Option<File>,
    next_sequence: u64,
    total_bytes: u64,
    /// Written since the last fsync.
    dirty: bool,
}

/// What one append kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Lines written.
    pub recorded: usize,
    /// Lines left out because one request's records may not exceed a segment.
    pub too_large: usize,
}

/// A segment as it was when listed for a reader: its records up to `len` bytes are complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSnapshot {
    pub path: PathBuf,
    pub len: u64,
    pub newest_micros: i64,
}

/// Which records a read returns; every bound is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Received at or after (µs).
    pub from_micros: Option<i64>,
    /// Received before (µs).
    pub to_micros: Option<i64>,
    /// Exactly this source.
    pub source: Option<String>,
    pub kind: Option<LineErrorKind>,
    /// Exactly this key name.
    pub key: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &Rejection) -> bool {
        self.from_micros.is_none_or(|from| r.received_micros >= from)
            && self.to_micros.is_none_or(|to| r.received_micros < to)
            && self.source.as_ref().is_none_or(|s| *s == r.source)
            && self.kind.is_none_or(|k| k == r.kind)
            && self.key.as_ref().is_none_or(|k| r.key.as_ref() == Some(k))
    }
}

impl RejectedStore {
    /// Opens (creating) the record in `dir`: scans every segment, cuts a torn tail off the newest, reports damage
    /// elsewhere, and applies the retention and the size cap as of `now_micros`. New records go to a new segment.
    pub fn open(
        dir: &Path,
        options: RejectedOptions,
        now_micros: i64,
    ) -> Result<(RejectedStore, Recovery), RejectedError> {
        std::fs::create_dir_all(dir).map_err(RejectedError::io("create", dir))?;
        let listed = segment::list(dir).map_err(RejectedError::io("list", dir))?;
        let mut recovery = Recovery { segments: listed.len(), ..Recovery::default() };
        let mut segments = VecDeque::new();
        let last = listed.last().map(|(sequence, _)| *sequence);
        for (sequence, path) in listed.iter().cloned() {
            let Some(bytes) =
                segment::read_prefix(&path, super::MAX_SEGMENT_BYTES).map_err(RejectedError::io("read", &path))?
            else {
                continue;
            };
            let mut newest = None;
            let parsed = segment::parse(&bytes, |r| {
                recovery.records += 1;
                newest = Some(newest.map_or(r.received_micros, |n: i64| n.max(r.received_micros)));
            });
            let mut len = bytes.len() as u64;
            if let Some(reason) = parsed.damage {
                let damage = Damage { path: path.clone(), offset: parsed.valid_bytes, reason: reason.clone() };
                let torn = Some(sequence) == last && !matches!(reason, Corruption::UnsupportedVersion(_));
                if !torn {
                    recovery.damaged.push(damage);
                } else if parsed.valid_bytes < HEADER_BYTES {
                    // Not even a header: the segment was being created when the process stopped.
                    std::fs::remove_file(&path).map_err(RejectedError::io("remove", &path))?;
                    recovery.truncated = Some(damage);
                    continue;
                } else {
                    let file = OpenOptions::new().write(true).open(&path).map_err(RejectedError::io("open", &path))?;
                    file.set_len(parsed.valid_bytes).map_err(RejectedError::io("truncate", &path))?;
                    file.sync_all().map_err(RejectedError::io("fsync", &path))?;
                    len = parsed.valid_bytes;
                    recovery.truncated = Some(damage);
                }
            }
            let newest_micros = match newest {
                Some(newest) => newest,
                None => modified_micros(&path).unwrap_or(now_micros),
            };
            segments.push_back(Segment { path, bytes: len, newest_micros });
        }
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let next_sequence = last.map_or(1, |l| l.saturating_add(1));
        let state = State { segments, active: None, next_sequence, total_bytes, dirty: false };
        let store = RejectedStore { dir: dir.to_path_buf(), options, state: Mutex::new(state) };
        store.expire(now_micros)?;
        store.enforce_cap(&mut store.lock())?;
        Ok((store, recovery))
    }

    /// The options it keeps records by.
    pub fn options(&self) -> &RejectedOptions {
        &self.options
    }

    /// The directory of its segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of all segments.
    pub fn bytes(&self) -> u64 {
        self.lock().total_bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while appending leaves the state consistent enough to go on (at worst a segment's size is
        // undercounted until the next start).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `lines`, rejected in one request from `origin` received at `received_micros`, with one `write()`
    /// (plus a header when a new segment starts). Lines beyond what one segment holds are left out and counted in
    /// [`Appended::too_large`]; the caller applies [`RejectedOptions::max_per_request`] before.
    pub fn append(&self, origin: &Origin, received_micros: i64, lines: &[KeptLine]) -> Result<Appended, RejectedError> {
        let segment_bytes = self.options.segment_bytes();
        let room = (segment_bytes - HEADER_BYTES) as usize;
        let header = HEADER_BYTES as usize;
        let mut buf = Vec::with_capacity(header + lines.len() * 128);
        buf.extend_from_slice(&segment::header());
        let mut recorded = 0;
        for line in lines {
            let before = buf.len();
            record::encode(origin, received_micros, line, &mut buf);
            if buf.len() - header > room {
                buf.truncate(before);
                break;
            }
            recorded += 1;
        }
        let appended = Appended { recorded, too_large: lines.len() - recorded };
        if recorded == 0 {
            return Ok(appended);
        }
        let batch = (buf.len() - header) as u64;
        let mut state = self.lock();
        let state = &mut *state;
        if state.active.is_some() && state.segments.back().is_some_and(|s| s.bytes + batch > segment_bytes) {
            self.seal(state)?;
        }
        let written = match (&mut state.active, state.segments.back_mut()) {
            (Some(file), Some(active)) => {
                if let Err(e) = file.write_all(&buf[header..]) {
                    // Leave no half record in the middle of the segment: cut back, or start a new one next time.
                    if file.set_len(active.bytes).is_err() {
                        state.active = None;
                    }
                    return Err(RejectedError::io("write", &active.path)(e));
                }
                active.newest_micros = active.newest_micros.max(received_micros);
                active.bytes += batch;
                batch
            }
            _ => {
                let sequence = state.next_sequence;
                let path = self.dir.join(segment::name(sequence));
                let mut file = OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(&path)
                    .map_err(RejectedError::io("create", &path))?;
                state.next_sequence += 1;
                if let Err(e) = file.write_all(&buf) {
                    let _ = std::fs::remove_file(&path);
                    return Err(RejectedError::io("write", &path)(e));
                }
                // The new file's name must survive a power loss too.
                if let Ok(dir) = File::open(&self.dir) {
                    let _ = dir.sync_all();
                }
                let bytes = buf.len() as u64;
                state.segments.push_back(Segment { path, bytes, newest_micros: received_micros });
                state.active = Some(file);
                bytes
            }
        };
        state.total_bytes += written;
        state.dirty = true;
        // The lines are written: a segment that cannot be deleted now is tried again at the next append.
        if let Err(e) = self.enforce_cap(state) {
            tracing::warn!(error = %e, "cannot delete the oldest segment of rejected lines beyond the size cap");
        }
        Ok(appended)
    }

    /// Closes the active segment, fsynced; the next append starts a new one.
    fn seal(&self, state: &mut State) -> Result<(), RejectedError> {
        if let (Some(file), Some(active)) = (state.active.take(), state.segments.back()) {
            file.sync_all().map_err(RejectedError::io("fsync", &active.path))?;
        }
        Ok(())
    }

    /// Deletes the oldest segments while all of them together exceed the cap (never the active one: one segment
    /// never exceeds the cap).
    fn enforce_cap(&self, state: &mut State) -> Result<(), RejectedError> {
        while state.total_bytes > self.options.max_bytes {
            if state.segments.len() == 1 && state.active.is_some() {
                break;
            }
            let Some(oldest) = state.segments.front() else { break };
            remove(&oldest.path)?;
            state.total_bytes -= oldest.bytes;
            if state.segments.len() == 1 {
                state.active = None;
            }
            state.segments.pop_front();
        }
        Ok(())
    }

    /// Deletes every segment whose newest record is older than the retention as of `now_micros` (the active one
    /// too: the next append starts a new one); returns how many.
    pub fn expire(&self, now_micros: i64) -> Result<usize, RejectedError> {
        let cutoff = self.cutoff(now_micros);
        let mut state = self.lock();
        let mut removed = 0;
        while let Some(oldest) = state.segments.front() {
            if oldest.newest_micros >= cutoff {
                break;
            }
            remove(&oldest.path)?;
            state.total_bytes -= oldest.bytes;
            if state.segments.len() == 1 {
                state.active = None;
            }
            state.segments.pop_front();
            removed += 1;
        }
        Ok(removed)
    }

    /// The oldest receive time still shown as of `now_micros`.
    pub fn cutoff(&self, now_micros: i64) -> i64 {
        let retention = i64::try_from(self.options.retention.as_micros()).unwrap_or(i64::MAX);
        now_micros.saturating_sub(retention)
    }

    /// Fsyncs what was written since the last call (the lock is not held while the disk works).
    pub fn sync(&self) -> Result<(), RejectedError> {
        let (file, path) = {
            let mut state = self.lock();
            if !state.dirty {
                return Ok(());
            }
            let Some(file) = &state.active else { return Ok(()) };
            let file = file.try_clone().map_err(RejectedError::io("reopen", &self.dir))?;
            state.dirty = false;
            (file, state.segments.back().map(|s| s.path.clone()).unwrap_or_default())
        };
        file.sync_data().map_err(|e| {
            self.lock().dirty = true;
            RejectedError::io("fsync", path)(e)
        })
    }

    /// The segments now, oldest first, each with the length its complete records reach.
    pub fn snapshot(&self) -> Vec<SegmentSnapshot> {
        self.lock()
            .segments
            .iter()
            .map(|s| SegmentSnapshot { path: s.path.clone(), len: s.bytes, newest_micros: s.newest_micros })
            .collect()
    }

    /// The records of `segment` that `filter` matches and that are within the retention as of `now_micros`, in
    /// the order written, and where the segment is damaged if it is (the records before the damage are returned).
    /// A segment deleted meanwhile has no records.
    pub fn read_segment(
        &self,
        segment: &SegmentSnapshot,
        filter: &Filter,
        now_micros: i64,
    ) -> Result<(Vec<Rejection>, Option<Damage>), RejectedError> {
        let cutoff = self.cutoff(now_micros);
        let Some(bytes) =
            segment::read_prefix(&segment.path, segment.len).map_err(RejectedError::io("read", &segment.path))?
        else {
            return Ok((Vec::new(), None));
        };
        let mut records = Vec::new();
        let parsed = segment::parse(&bytes, |r| {
            if r.received_micros >= cutoff && filter.matches(&r) {
                records.push(r);
            }
        });
        let damage =
            parsed.damage.map(|reason| Damage { path: segment.path.clone(), offset: parsed.valid_bytes, reason });
        Ok((records, damage))
    }

    /// At most `limit` records that `filter` matches, newest first (in the reverse of the order written), and the
    /// damage met on the way.
    pub fn read(
        &self,
        filter: &Filter,
        limit: usize,
        now_micros: i64,
    ) -> Result<(Vec<Rejection>, Vec<Damage>), RejectedError> {
        let cutoff = self.cutoff(now_micros).max(filter.from_micros.unwrap_or(i64::MIN));
        let (mut out, mut damaged) = (Vec::new(), Vec::new());
        for segment in self.snapshot().iter().rev() {
            if out.len() >= limit {
                break;
            }
            if segment.newest_micros < cutoff {
                // Every record of this one was received before the range.
                continue;
            }
            let (records, damage) = self.read_segment(segment, filter, now_micros)?;
            damaged.extend(damage);
            out.extend(records.into_iter().rev().take(limit - out.len()));
        }
        Ok((out, damaged))
    }
}

/// Deletes a segment file (one already gone is fine).
fn remove(path: &Path) -> Result<(), RejectedError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RejectedError::io("remove", path)(e)),
    }
}

/// When the file at `path` was last written, µs since the epoch.
fn modified_micros(path: &Path) -> Option<i64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    let since = modified.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(since.as_micros()).ok()
}
