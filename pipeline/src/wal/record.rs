//! The byte layout of a WAL record's payload: one [`ReadingBatch`] with its name tables and its write time.
//!
//! ```text
//! kind u8 = 2
//! written u64    (the record's write time: see `crate::clock`; 0 until the writer stamps it)
//! n_sensors u16, then per sensor: len u8, UTF-8 bytes
//! n_devices u32, then per device: len u8, UTF-8 bytes
//! n_rows u32,    then per row:    sensor u16, device u32, micros i64, value f64   (22 bytes)
//! ```
//! Kind 3 is a batch written under an idempotency key (see `crate::idempotency`): after `written` comes
//!
//! ```text
//! key_len u8, key UTF-8 bytes    (the client's key, 1–255 bytes)
//! request [u8; 32]               (SHA-256 of the request)
//! received i64                   (µs since the Unix epoch)
//! answer_len u32, answer bytes   (the answer the request was given, encoded by the transport; opaque here)
//! ```
//! then the batch as in kind 2. The key and the readings are one record, so a crash leaves both or neither: a
//! retry is either answered from the key or stored for the first time, never stored twice.
//!
//! All integers little-endian. Names travel with every record so a record can be read without any configuration
//! and stays meaningful if the configured sensor set changes. Kind 1 (written by versions before write times) is
//! the same without `written`; it reads as write time 0 ("unknown": the statistics feed it in log order).

use crate::reading::{ReadingBatch, Row};

/// Readings without a write time (older logs).
const KIND_READINGS: u8 = 1;
/// Readings with a write time.
const KIND_STAMPED_READINGS: u8 = 2;
/// Readings with a write time, written under an idempotency key.
const KIND_KEYED_READINGS: u8 = 3;
/// Where the write time sits in a kind-2 payload.
const WRITTEN_BYTES: std::ops::Range<usize> = 1..9;
const ROW_BYTES: usize = 2 + 4 + 8 + 8;

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed WAL payload: {0}")]
pub struct PayloadError(&'static str);

/// The idempotency key a record was written under, read in place (or given to be written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyView<'a> {
    /// The client's key as sent, 1–255 bytes.
    pub key: &'a str,
    /// SHA-256 of the request (its route, query and body): a retry must match it.
    pub request: [u8; 32],
    /// When the request was received, µs since the Unix epoch: the key is remembered for a window after it.
    pub received_micros: i64,
    /// The answer the request was given, encoded by the transport that answered it.
    pub answer: &'a [u8],
}

/// Appends the encoding of `batch` to `out`, with write time 0 (the writer stamps it: [`stamp_written`]).
pub fn encode_batch(batch: &ReadingBatch, out: &mut Vec<u8>) {
    encode(batch, None, out)
}

/// The same, written under `key` (kind 3). A key longer than 255 bytes is a caller's bug: it is cut.
pub fn encode_keyed_batch(batch: &ReadingBatch, key: &KeyView<'_>, out: &mut Vec<u8>) {
    encode(batch, Some(key), out)
}

fn encode(batch: &ReadingBatch, key: Option<&KeyView<'_>>, out: &mut Vec<u8>) {
    let names = batch.sensors.text_len() + batch.sensors.len() + batch.devices.text_len() + batch.devices.len();
    let key_bytes = key.map_or(0, |k| 1 + k.key.len() + 32 + 8 + 4 + k.answer.len());
    out.reserve(1 + 8 + key_bytes + 2 + 4 + 4 + names + batch.rows.len() * ROW_BYTES);
    out.push(if key.is_some() { KIND_KEYED_READINGS } else { KIND_STAMPED_READINGS });
    out.extend_from_slice(&0u64.to_le_bytes());
    if let Some(k) = key {
        let name = &k.key.as_bytes()[..k.key.len().min(255)];
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&k.request);
        out.extend_from_slice(&k.received_micros.to_le_bytes());
        out.extend_from_slice(&(k.answer.len() as u32).to_le_bytes());
        out.extend_from_slice(k.answer);
    }
    out.extend_from_slice(&(batch.sensors.len() as u16).to_le_bytes());
    for s in batch.sensors.iter() {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&(batch.devices.len() as u32).to_le_bytes());
    for d in batch.devices.iter() {
        out.push(d.len() as u8);
        out.extend_from_slice(d.as_bytes());
    }
    out.extend_from_slice(&(batch.rows.len() as u32).to_le_bytes());
    for r in &batch.rows {
        out.extend_from_slice(&r.sensor.to_le_bytes());
        out.extend_from_slice(&r.device.to_le_bytes());
        out.extend_from_slice(&r.micros.to_le_bytes());
        out.extend_from_slice(&r.value.to_le_bytes());
    }
}

/// Sets the write time of a payload made by [`encode_batch`]; leaves any other payload as it is.
pub fn stamp_written(payload: &mut [u8], written: u64) {
    if matches!(payload.first(), Some(&(KIND_STAMPED_READINGS | KIND_KEYED_READINGS)))
        && payload.len() >= WRITTEN_BYTES.end
    {
        payload[WRITTEN_BYTES].copy_from_slice(&written.to_le_bytes());
    }
}

/// A payload's batch read in place: names are slices of the payload, rows are decoded as they are read. The
/// statistics' feeder reads every record this way, so that a record of a thousand devices costs no thousand
/// allocations.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchView<'a> {
    /// The record's write time (0: unknown).
    pub written: u64,
    /// The idempotency key it was written under, if any.
    pub key: Option<KeyView<'a>>,
    pub sensors: Vec<&'a str>,
    pub devices: Vec<&'a str>,
    /// `n × ROW_BYTES` bytes, every name index checked.
    rows: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// A batch of no reading (what an unreadable record is read as).
    pub fn empty() -> Self {
        BatchView { written: 0, key: None, sensors: Vec::new(), devices: Vec::new(), rows: &[] }
    }

    /// Number of readings.
    pub fn len(&self) -> usize {
        self.rows.len() / ROW_BYTES
    }

    /// Whether the batch holds no reading.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The batch as an owned [`ReadingBatch`].
    pub fn to_batch(&self) -> ReadingBatch {
        ReadingBatch {
            sensors: self.sensors.iter().copied().collect(),
            devices: self.devices.iter().copied().collect(),
            rows: self.rows().collect(),
        }
    }

    /// The readings, in write order.
    pub fn rows(&self) -> impl Iterator<Item = Row> + 'a {
        self.rows.chunks_exact(ROW_BYTES).map(|r| Row {
            sensor: u16::from_le_bytes([r[0], r[1]]),
            device: u32::from_le_bytes([r[2], r[3], r[4], r[5]]),
            micros: i64::from_le_bytes(r[6..14].try_into().expect("8 bytes")),
            value: f64::from_le_bytes(r[14..22].try_into().expect("8 bytes")),
        })
    }
}

/// Decodes a payload written by [`encode_batch`] in place (the one decoder; [`BatchView::to_batch`] copies it);
/// checks every index, never panics.
pub fn decode_view(payload: &[u8]) -> Result<BatchView<'_>, PayloadError> {
    let mut input = Cursor(payload);
    let kind = input.u8()?;
    let written = match kind {
        KIND_READINGS => 0,
        KIND_STAMPED_READINGS | KIND_KEYED_READINGS => u64::from_le_bytes(input.array()?),
        _ => return Err(PayloadError("unknown record kind")),
    };
    let key = match kind {
        KIND_KEYED_READINGS => {
            let key = input.name()?;
            let request = input.array()?;
            let received_micros = i64::from_le_bytes(input.array()?);
            let answer_len = input.u32()? as usize;
            Some(KeyView { key, request, received_micros, answer: input.take(answer_len)? })
        }
        _ => None,
    };
    let n_sensors = input.u16()? as usize;
    let mut sensors = Vec::with_capacity(n_sensors);
    for _ in 0..n_sensors {
        sensors.push(input.name()?);
    }
    let n_devices = input.u32()? as usize;
    let mut devices = Vec::with_capacity(n_devices.min(payload.len()));
    for _ in 0..n_devices {
        devices.push(input.name()?);
    }
    let n_rows = input.u32()? as usize;
    if input.0.len() != n_rows * ROW_BYTES {
        return Err(PayloadError("row count does not match payload length"));
    }
    let view = BatchView { written, key, sensors, devices, rows: input.0 };
    if view.rows().any(|row| row.sensor as usize >= view.sensors.len() || row.device as usize >= view.devices.len()) {
        return Err(PayloadError("name index out of range"));
    }
    Ok(view)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PayloadError> {
        if self.0.len() < n {
            return Err(PayloadError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], PayloadError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }
    fn u8(&mut self) -> Result<u8, PayloadError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PayloadError> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, PayloadError> {
        self.array().map(u32::from_le_bytes)
    }
    fn name(&mut self) -> Result<&'a str, PayloadError> {
        let len = self.u8()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| PayloadError("name is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_batch(payload: &[u8]) -> Result<(u64, ReadingBatch), PayloadError> {
        decode_view(payload).map(|view| (view.written, view.to_batch()))
    }
    use crate::reading::{DEFAULT_SENSORS, DeviceInterner};
    use proptest::prelude::*;

    fn sample() -> ReadingBatch {
        let mut b = ReadingBatch::new();
        let mut i = DeviceInterner::default();
        for (k, dev) in ["a", "bb", "a", "ccc"].iter().enumerate() {
            let device = i.intern(&mut b.devices, dev);
            b.rows.push(Row {
                sensor: i.intern_sensor(&mut b.sensors, DEFAULT_SENSORS[k % 6]).unwrap(),
                device,
                micros: k as i64 * 1_000_000 - 5,
                value: k as f64 * -1.25,
            });
        }
        b
    }

    #[test]
    fn round_trips_with_its_write_time() {
        let b = sample();
        let mut buf = Vec::new();
        encode_batch(&b, &mut buf);
        assert_eq!(decode_batch(&buf).unwrap(), (0, b.clone()));
        stamp_written(&mut buf, 0x0102_0304_0506_0708);
        assert_eq!(decode_batch(&buf).unwrap(), (0x0102_0304_0506_0708, b));
    }

    #[test]
    fn a_record_of_the_kind_before_write_times_reads_with_time_zero() {
        let b = sample();
        let mut buf = Vec::new();
        encode_batch(&b, &mut buf);
        buf.drain(WRITTEN_BYTES);
        buf[0] = KIND_READINGS;
        assert_eq!(decode_batch(&buf).unwrap(), (0, b));
    }

    #[test]
    fn a_keyed_record_carries_its_key_beside_the_same_batch() {
        let b = sample();
        let key =
            KeyView { key: "push:ab12:0", request: [7; 32], received_micros: 1_700_000_000_123_456, answer: b"{}" };
        let mut buf = Vec::new();
        encode_keyed_batch(&b, &key, &mut buf);
        stamp_written(&mut buf, 99);
        let view = decode_view(&buf).unwrap();
        assert_eq!((view.written, view.key, view.to_batch()), (99, Some(key), b.clone()));
        // An empty batch (every line rejected) still records its key.
        let mut buf = Vec::new();
        encode_keyed_batch(&ReadingBatch::new(), &key, &mut buf);
        let view = decode_view(&buf).unwrap();
        assert_eq!((view.key, view.len()), (Some(key), 0));
    }

    proptest! {
        #[test]
        fn corrupt_keyed_payloads_never_panic(cut in 0usize..300, flip in 0usize..300, byte in any::<u8>()) {
            let key = KeyView { key: "k", request: [1; 32], received_micros: 5, answer: b"{\"accepted\":4}" };
            let mut buf = Vec::new();
            encode_keyed_batch(&sample(), &key, &mut buf);
            let f = flip % buf.len();
            buf[f] = byte;
            buf.truncate(cut);
            let _ = decode_batch(&buf);
        }

        #[test]
        fn corrupt_payloads_never_panic(cut in 0usize..200, flip in 0usize..200, byte in any::<u8>()) {
            let mut buf = Vec::new();
            encode_batch(&sample(), &mut buf);
            let f = flip % buf.len();
            buf[f] = byte;
            buf.truncate(cut);
            let _ = decode_batch(&buf);
        }
    }
}
