//! The byte layout of a WAL record's payload: one [`ReadingBatch`] with its name tables.
//!
//! ```text
//! kind u8 = 1
//! n_sensors u16, then per sensor: len u8, UTF-8 bytes
//! n_devices u32, then per device: len u8, UTF-8 bytes
//! n_rows u32,    then per row:    sensor u16, device u32, micros i64, value f64   (22 bytes)
//! ```
//! All integers little-endian. Names travel with every record so a record can be read without any configuration
//! and stays meaningful if the configured sensor set changes.

use std::sync::Arc;

use crate::reading::{ReadingBatch, Row};

const KIND_READINGS: u8 = 1;
const ROW_BYTES: usize = 2 + 4 + 8 + 8;

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed WAL payload: {0}")]
pub struct PayloadError(&'static str);

/// Appends the encoding of `batch` to `out`.
pub fn encode_batch(batch: &ReadingBatch, out: &mut Vec<u8>) {
    let names: usize = batch.sensors.iter().chain(batch.devices.iter()).map(|n| n.len() + 1).sum();
    out.reserve(1 + 2 + 4 + 4 + names + batch.rows.len() * ROW_BYTES);
    out.push(KIND_READINGS);
    out.extend_from_slice(&(batch.sensors.len() as u16).to_le_bytes());
    for s in batch.sensors.iter() {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&(batch.devices.len() as u32).to_le_bytes());
    for d in &batch.devices {
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

/// Decodes a payload written by [`encode_batch`]; checks every index, never panics.
pub fn decode_batch(payload: &[u8]) -> Result<ReadingBatch, PayloadError> {
    let mut input = Cursor(payload);
    if input.u8()? != KIND_READINGS {
        return Err(PayloadError("unknown record kind"));
    }
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
    let mut rows = Vec::with_capacity(n_rows);
    for _ in 0..n_rows {
        let row = Row { sensor: input.u16()?, device: input.u32()?, micros: input.i64()?, value: input.f64()? };
        if row.sensor as usize >= sensors.len() || row.device as usize >= devices.len() {
            return Err(PayloadError("name index out of range"));
        }
        rows.push(row);
    }
    Ok(ReadingBatch { sensors: Arc::from(sensors), devices, rows })
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
    fn i64(&mut self) -> Result<i64, PayloadError> {
        self.array().map(i64::from_le_bytes)
    }
    fn f64(&mut self) -> Result<f64, PayloadError> {
        self.array().map(f64::from_le_bytes)
    }
    fn name(&mut self) -> Result<Box<str>, PayloadError> {
        let len = self.u8()? as usize;
        std::str::from_utf8(self.take(len)?).map(Box::from).map_err(|_| PayloadError("name is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{DeviceInterner, SensorSet};
    use proptest::prelude::*;

    fn sample() -> ReadingBatch {
        let mut b = ReadingBatch::new(&SensorSet::default());
        let mut i = DeviceInterner::default();
        for (k, dev) in ["a", "bb", "a", "ccc"].iter().enumerate() {
            let device = i.intern(&mut b.devices, dev);
            b.rows.push(Row {
                sensor: k as u16 % 6,
                device,
                micros: k as i64 * 1_000_000 - 5,
                value: k as f64 * -1.25,
            });
        }
        b
    }

    #[test]
    fn round_trips() {
        let b = sample();
        let mut buf = Vec::new();
        encode_batch(&b, &mut buf);
        assert_eq!(decode_batch(&buf).unwrap(), b);
    }

    proptest! {
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
