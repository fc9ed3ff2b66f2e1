//! Groups of one number: a time bucket (`floor(extract(epoch FROM timestamp) / 900)`), a timestamp, a count.
//!
//! Why: DataFusion groups a primitive key by hashing every row (`GroupValuesPrimitive::intern`, 11 % of Q1 of
//! `benches/sql-vs-duckdb.sh`). The archive is sorted by (sensor, device, timestamp), so a time bucket's rows come
//! in stretches (a device's readings of one quarter hour): here a stretch of equal keys is looked up once.
//!
//! Same groups as DataFusion's (55, `GroupValuesPrimitive`): keys are equal when their bits are, once `-0.0` is
//! folded into `0.0` (so each NaN bit pattern is a group of its own, and `-0.0` counts as `0.0`); nulls are one
//! group; the key column is emitted in the key's own type.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::PhysicalExpr;

/// The groups of one number key seen so far.
pub(super) struct NumberGroups {
    expr: Arc<dyn PhysicalExpr>,
    data_type: DataType,
    /// Group index of each key's bits.
    index: HashMap<u64, usize, foldhash::fast::RandomState>,
    /// The null key's group, once a row has it.
    null_group: Option<usize>,
    /// Each group's key bits (`None`: the null key), by group index.
    keys: Vec<Option<u64>>,
    /// The current batch's row → group index.
    pub(super) rows: Vec<usize>,
    /// The current batch's rows as maximal stretches of one group: (group index, rows).
    pub(super) runs: Vec<(usize, usize)>,
    /// Scratch: the current batch's key bits.
    bits: Vec<u64>,
}

impl NumberGroups {
    /// Whether a key of `data_type` can be grouped here.
    pub(super) fn takes(data_type: &DataType) -> bool {
        matches!(data_type, DataType::Float64 | DataType::Int64 | DataType::Timestamp(_, _))
    }

    pub(super) fn new(expr: Arc<dyn PhysicalExpr>, data_type: DataType) -> Self {
        NumberGroups {
            expr,
            data_type,
            index: HashMap::default(),
            null_group: None,
            keys: Vec::new(),
            rows: Vec::new(),
            runs: Vec::new(),
            bits: Vec::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Bytes held (approximately).
    pub(super) fn size(&self) -> usize {
        self.index.capacity() * 24
            + self.keys.capacity() * 16
            + self.rows.capacity() * 8
            + self.runs.capacity() * 16
            + self.bits.capacity() * 8
    }

    /// The group index of every row of `batch` into `rows`, new groups added.
    pub(super) fn intern(&mut self, batch: &RecordBatch) -> Result<()> {
        let rows = batch.num_rows();
        let keys = self.expr.evaluate(batch)?.into_array(rows)?;
        self.bits.clear();
        match keys.data_type() {
            DataType::Float64 => {
                self.bits.extend(keys.as_primitive::<Float64Type>().values().iter().map(|v| canonical_bits(*v)))
            }
            DataType::Int64 | DataType::Timestamp(_, _) => {
                let keys = arrow::compute::cast(&keys, &DataType::Int64)?;
                self.bits.extend(keys.as_primitive::<Int64Type>().values().iter().map(|&v| v as u64));
            }
            other => {
                return Err(DataFusionError::Internal(format!(
                    "StretchAggregateExec: a number key of type {other} (planned as {})",
                    self.data_type
                )));
            }
        }
        let nulls = keys.logical_nulls();
        let valid = |row: usize| nulls.as_ref().is_none_or(|n| n.is_valid(row));
        self.rows.clear();
        self.rows.reserve(rows);
        self.runs.clear();
        let mut at = 0;
        while at < rows {
            let (bits, is_valid) = (self.bits[at], valid(at));
            let same = (at + 1..rows).take_while(|&r| valid(r) == is_valid && (!is_valid || self.bits[r] == bits));
            let run = 1 + same.count();
            let group = self.group_of(is_valid.then_some(bits));
            self.rows.extend(std::iter::repeat_n(group, run));
            match self.runs.last_mut() {
                Some((last, length)) if *last == group => *length += run,
                _ => self.runs.push((group, run)),
            }
            at += run;
        }
        Ok(())
    }

    /// The group of a key (`None`: null), a new group if it is new.
    fn group_of(&mut self, key: Option<u64>) -> usize {
        let next = self.keys.len();
        let group = match key {
            Some(bits) => *self.index.entry(bits).or_insert(next),
            None => *self.null_group.get_or_insert(next),
        };
        if group == next {
            self.keys.push(key);
        }
        group
    }

    /// The key column of every group (in the key's type); the groups start again.
    pub(super) fn emit(&mut self) -> Result<Vec<ArrayRef>> {
        let keys = std::mem::take(&mut self.keys);
        let column: ArrayRef = match self.data_type {
            DataType::Float64 => Arc::new(keys.iter().map(|k| k.map(f64::from_bits)).collect::<Float64Array>()),
            _ => {
                let numbers: Int64Array = keys.iter().map(|k| k.map(|b| b as i64)).collect();
                arrow::compute::cast(&numbers, &self.data_type)?
            }
        };
        // New maps, not cleared ones: a cleared map keeps its capacity.
        self.index = HashMap::default();
        self.null_group = None;
        Ok(vec![column])
    }
}

/// A float's bits with `-0.0` folded into `0.0`, as DataFusion groups them.
fn canonical_bits(value: f64) -> u64 {
    let bits = value.to_bits();
    if bits << 1 == 0 { 0 } else { bits }
}
