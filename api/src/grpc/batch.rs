//! `weir.v1.ReadingBatch`, decoded without a copy or an allocation per reading.
//!
//! prost's generated type turns every reading into a struct of three `String`s: a message held about six times its
//! own size while it was validated (issue 17: a 60 MB `Write` took 660 MB). This type is generated in its place
//! (`extern_path` in `build.rs`): decoding keeps each reading as a slice of the received message (tonic hands the
//! whole message over in one buffer, so a slice is a reference count, not a copy), and [`ReadingBatch::readings`]
//! reads a reading's fields from its slice only when it is validated, as borrowed `&str`s. A batch then costs the
//! message plus 32 bytes per reading. A reading whose own encoding is broken (a string that is not UTF-8, a field cut
//! short) is rejected alone, with its index and the reason, like an invalid NDJSON line; a batch whose outer encoding
//! is broken fails as a whole, as any malformed message does.
//!
//! Encoding (clients, tests) writes the same wire format as the generated type: the two are interchangeable.

use bytes::{Buf, BufMut, Bytes};
use prost::DecodeError;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, encode_key, encode_varint, skip_field};
use weir_pipeline::decode::{ReadingFields, Timestamp};

use super::proto::Reading;

/// `ReadingBatch.readings`.
const READINGS: u32 = 1;
/// `ReadingBatch.atomic`.
const ATOMIC: u32 = 2;
/// `ReadingBatch.batch_id`.
const BATCH_ID: u32 = 3;

/// A batch of readings as received: each reading still encoded (see the module doc).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadingBatch {
    /// Each reading's encoded `weir.v1.Reading`.
    encoded: Vec<Bytes>,
    /// Store nothing of this batch unless every reading is valid.
    pub atomic: bool,
    /// The batch's idempotency key (empty: none): a retry with the same id gets the first answer.
    pub batch_id: String,
}

impl ReadingBatch {
    /// A batch of `readings` (encoded now).
    pub fn new(readings: impl IntoIterator<Item = Reading>, atomic: bool) -> Self {
        let encoded = readings.into_iter().map(|r| Bytes::from(prost::Message::encode_to_vec(&r))).collect();
        ReadingBatch { encoded, atomic, batch_id: String::new() }
    }

    /// The same batch sent under idempotency key `batch_id`.
    pub fn with_batch_id(mut self, batch_id: impl Into<String>) -> Self {
        self.batch_id = batch_id.into();
        self
    }

    /// Adds the batch's readings and flags, as sent, to the hash that identifies a keyed request.
    pub fn hash_into(&self, request: &mut weir_pipeline::idempotency::RequestHasher) {
        request.update(&[u8::from(self.atomic)]);
        for reading in &self.encoded {
            request.update_item(reading);
        }
    }

    /// How many readings the batch holds.
    pub fn len(&self) -> usize {
        self.encoded.len()
    }

    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    /// Each reading's fields, borrowed from the message, or why its encoding cannot be read.
    pub fn readings(&self) -> impl ExactSizeIterator<Item = Result<ReadingFields<'_>, String>> + Send + '_ {
        self.encoded.iter().map(|bytes| reading_fields(bytes).map_err(|e| format!("not a valid weir.v1.Reading: {e}")))
    }
}

/// Why one encoded reading cannot be read.
#[derive(Debug, thiserror::Error)]
enum ReadingError {
    #[error("{0}: cut short")]
    CutShort(&'static str),
    #[error("{0}: not UTF-8")]
    NotUtf8(&'static str),
    #[error("field {tag} has the wrong wire type ({wire_type:?})")]
    WireType { tag: u32, wire_type: WireType },
    #[error(transparent)]
    Malformed(#[from] DecodeError),
}

/// Reads the fields of one encoded `weir.v1.Reading` (proto3: a field given twice takes its last value; unknown
/// fields are skipped).
fn reading_fields(mut buf: &[u8]) -> Result<ReadingFields<'_>, ReadingError> {
    let mut fields = ReadingFields::default();
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match (tag, wire_type) {
            (1, WireType::LengthDelimited) => fields.sensor = Some(text(&mut buf, "sensor")?),
            (2, WireType::SixtyFourBit) => {
                if buf.remaining() < 8 {
                    return Err(ReadingError::CutShort("value"));
                }
                fields.value = Some(buf.get_f64_le());
            }
            (3, WireType::LengthDelimited) => fields.timestamp = Some(Timestamp::Rfc3339(text(&mut buf, "timestamp")?)),
            (4, WireType::LengthDelimited) => fields.device = Some(text(&mut buf, "device")?),
            (1..=4, _) => return Err(ReadingError::WireType { tag, wire_type }),
            _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default())?,
        }
    }
    // proto3 strings: absent and empty are the same; an empty sensor or timestamp is a missing one.
    fields.sensor = fields.sensor.filter(|s| !s.is_empty());
    fields.timestamp = fields.timestamp.filter(|t| *t != Timestamp::Rfc3339(""));
    Ok(fields)
}

/// A length-delimited UTF-8 string field, borrowed.
fn text<'a>(buf: &mut &'a [u8], field: &'static str) -> Result<&'a str, ReadingError> {
    let len = decode_varint(buf)?;
    let len = usize::try_from(len).ok().filter(|&l| l <= buf.len()).ok_or(ReadingError::CutShort(field))?;
    let (bytes, rest) = buf.split_at(len);
    *buf = rest;
    std::str::from_utf8(bytes).map_err(|_| ReadingError::NotUtf8(field))
}

fn delimited_len(len: usize) -> usize {
    prost::encoding::key_len(READINGS) + prost::encoding::encoded_len_varint(len as u64) + len
}

impl prost::Message for ReadingBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for reading in &self.encoded {
            encode_key(READINGS, WireType::LengthDelimited, buf);
            encode_varint(reading.len() as u64, buf);
            buf.put_slice(reading);
        }
        if self.atomic {
            prost::encoding::bool::encode(ATOMIC, &self.atomic, buf);
        }
        if !self.batch_id.is_empty() {
            prost::encoding::string::encode(BATCH_ID, &self.batch_id, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            READINGS => {
                // `Bytes` takes its value with `copy_to_bytes`, and tonic's buffer is one `BytesMut`: a slice of the
                // message, not a copy.
                let mut reading = Bytes::new();
                prost::encoding::bytes::merge(wire_type, &mut reading, buf, ctx)?;
                self.encoded.push(reading);
                Ok(())
            }
            ATOMIC => prost::encoding::bool::merge(wire_type, &mut self.atomic, buf, ctx),
            BATCH_ID => prost::encoding::string::merge(wire_type, &mut self.batch_id, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let readings: usize = self.encoded.iter().map(|r| delimited_len(r.len())).sum();
        let atomic = if self.atomic { prost::encoding::bool::encoded_len(ATOMIC, &self.atomic) } else { 0 };
        let id =
            if self.batch_id.is_empty() { 0 } else { prost::encoding::string::encoded_len(BATCH_ID, &self.batch_id) };
        readings + atomic + id
    }

    fn clear(&mut self) {
        self.encoded.clear();
        self.atomic = false;
        self.batch_id.clear();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    /// The generated type, with the same wire format: what any other client sends.
    #[derive(Clone, PartialEq, prost::Message)]
    struct GeneratedBatch {
        #[prost(message, repeated, tag = "1")]
        readings: Vec<Reading>,
        #[prost(bool, tag = "2")]
        atomic: bool,
        #[prost(string, tag = "3")]
        batch_id: String,
    }

    fn any_reading() -> impl Strategy<Value = Reading> {
        (".{0,12}", proptest::option::of(any::<f64>()), ".{0,30}", proptest::option::of(".{0,8}"))
            .prop_map(|(sensor, value, timestamp, device)| Reading { sensor, value, timestamp, device })
    }

    proptest! {
        /// Whatever the generated type encodes, this one decodes to the same fields, and encodes back byte for byte.
        #[test]
        fn agrees_with_the_generated_type(readings in proptest::collection::vec(any_reading(), 0..20),
                                          atomic in any::<bool>(), batch_id in "[a-z0-9-]{0,20}") {
            let generated = GeneratedBatch { readings: readings.clone(), atomic, batch_id: batch_id.clone() };
            let bytes = generated.encode_to_vec();
            let batch = ReadingBatch::decode(Bytes::from(bytes.clone())).unwrap();
            prop_assert_eq!(batch.atomic, atomic);
            prop_assert_eq!(&batch.batch_id, &batch_id);
            prop_assert_eq!(batch.len(), readings.len());
            for (fields, r) in batch.readings().zip(&readings) {
                let fields = fields.unwrap();
                prop_assert_eq!(fields.sensor, Some(r.sensor.as_str()).filter(|s| !s.is_empty()));
                prop_assert_eq!(fields.value.map(f64::to_bits), r.value.map(f64::to_bits));
                prop_assert_eq!(fields.timestamp, Some(r.timestamp.as_str()).filter(|t| !t.is_empty()).map(Timestamp::Rfc3339));
                prop_assert_eq!(fields.device, r.device.as_deref());
            }
            prop_assert_eq!(batch.encode_to_vec(), bytes.clone());
            prop_assert_eq!(batch.encoded_len(), bytes.len());
            prop_assert_eq!(ReadingBatch::new(readings, atomic).with_batch_id(batch_id).encode_to_vec(), bytes);
        }

        /// Any bytes at all: a batch decodes or fails, and each reading reads or is rejected; nothing panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(batch) = ReadingBatch::decode(Bytes::from(bytes)) {
                for reading in batch.readings() {
                    let _ = reading;
                }
            }
        }
    }

    #[test]
    fn a_broken_reading_is_named_and_the_others_still_read() {
        let good = Reading { sensor: "speed".into(), value: Some(1.0), timestamp: "t".into(), device: None };
        let mut bytes = Vec::new();
        let good_bytes = good.encode_to_vec();
        for reading in [&good_bytes[..], &[0x0a, 0x02, 0xff, 0xfe], &good_bytes[..], &[0x11, 0x00]] {
            encode_key(READINGS, WireType::LengthDelimited, &mut bytes);
            encode_varint(reading.len() as u64, &mut bytes);
            bytes.extend_from_slice(reading);
        }
        let batch = ReadingBatch::decode(Bytes::from(bytes)).unwrap();
        let results: Vec<_> = batch.readings().collect();
        assert!(results[0].is_ok() && results[2].is_ok());
        assert_eq!(results[1].as_ref().unwrap_err(), "not a valid weir.v1.Reading: sensor: not UTF-8");
        assert!(results[3].as_ref().unwrap_err().contains("value: cut short"), "{:?}", results[3]);
    }

    #[test]
    fn decoding_keeps_slices_of_the_message_not_copies() {
        let readings = (0..100).map(|i| Reading {
            sensor: "speed".into(),
            value: Some(f64::from(i)),
            timestamp: "2026-11-22T18:25:43.511Z".into(),
            device: Some("truck-7".into()),
        });
        let bytes = Bytes::from(ReadingBatch::new(readings, false).encode_to_vec());
        let range = bytes.as_ptr_range();
        let batch = ReadingBatch::decode(bytes.clone()).unwrap();
        for reading in &batch.encoded {
            assert!(range.contains(&reading.as_ptr()), "a reading was copied out of the message");
        }
    }
}
