//! `window_sum`, `window_mean`, `window_min`, `window_max` and `window_p50`, `window_p90`, `window_p95`,
//! `window_p99`: SQL aggregates that fold values with the live windows' own aggregate ([`WindowAgg`], its sketch
//! for the percentiles), so that `windows_*` over days not yet rolled up give the numbers `/api/v1/series` gives.
//!
//! Why not `sum`, `avg`, `min`, `max`: a window's sum is compensated (and scaled down for values near `f64::MAX`,
//! where it reports ±`f64::MAX` instead of overflowing to infinity), and its min and max order -0.0 before 0.0
//! (total order); SQL's plain aggregates differ from both in those cases, so the same window would answer
//! differently before and after its day's rollup is written. One aggregate, one set of numbers.
//!
//! The partial state is the window's stored form (count, stored sum and compensation, min, max, and for the
//! percentiles the encoded sketch), the one rollups keep, merged with the same addition.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{Accumulator, AggregateUDF, Volatility, create_udaf};
use weir_operators::model::{DeviceId, SeriesKey};
use weir_operators::sketch::{Bucket, NAMED_QUANTILES, Sketch};
use weir_operators::{Reading, WindowAgg};

/// What an aggregate reports of the window it folds.
#[derive(Debug, Clone, Copy)]
enum Statistic {
    Sum,
    Mean,
    Min,
    Max,
    /// The value at this quantile, from the window's sketch.
    Quantile(f64),
}

/// The four aggregates, to register with a session.
pub(crate) fn window_functions() -> Vec<AggregateUDF> {
    let quantiles = NAMED_QUANTILES.map(|(name, q)| (format!("window_{name}"), Statistic::Quantile(q)));
    [
        ("window_sum".to_owned(), Statistic::Sum),
        ("window_mean".to_owned(), Statistic::Mean),
        ("window_min".to_owned(), Statistic::Min),
        ("window_max".to_owned(), Statistic::Max),
    ]
    .into_iter()
    .chain(quantiles)
    .map(|(name, statistic)| {
        create_udaf(
            &name,
            vec![DataType::Float64],
            Arc::new(DataType::Float64),
            Volatility::Immutable,
            Arc::new(move |_| Ok(Box::new(WindowAccumulator { agg: None, statistic }))),
            Arc::new(vec![
                DataType::Int64,
                DataType::Float64,
                DataType::Float64,
                DataType::Float64,
                DataType::Float64,
                DataType::Binary,
            ]),
        )
    })
    .collect()
}

#[derive(Debug)]
struct WindowAccumulator {
    /// The window so far (`None`: no value yet).
    agg: Option<WindowAgg>,
    statistic: Statistic,
}

impl WindowAccumulator {
    fn merge(&mut self, more: WindowAgg) {
        match &mut self.agg {
            Some(agg) => agg.merge(&more),
            None => self.agg = Some(more),
        }
    }
}

/// A value as a reading (its time does not enter the sum, mean, min or max).
fn reading(value: f64) -> Reading {
    Reading { series: SeriesKey { device: DeviceId(0), sensor: weir_operators::SensorId(0) }, micros: 0, value, seq: 0 }
}

impl Accumulator for WindowAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let values = values[0].as_primitive::<Float64Type>();
        let sketched = matches!(self.statistic, Statistic::Quantile(_));
        for value in values.iter().flatten() {
            let agg = match &mut self.agg {
                Some(agg) => {
                    agg.add(&reading(value));
                    agg
                }
                None => self.agg.insert(WindowAgg::of(&reading(value))),
            };
            if let Some(bucket) = Bucket::of(value).filter(|_| sketched) {
                agg.add_to_sketch(bucket, 1);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let value = self.agg.as_ref().and_then(|agg| match self.statistic {
            Statistic::Sum => Some(agg.sum()),
            Statistic::Mean => Some(agg.mean()),
            Statistic::Min => Some(agg.min),
            Statistic::Max => Some(agg.max),
            Statistic::Quantile(q) => agg.quantile(q),
        });
        Ok(ScalarValue::Float64(value))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.agg.as_ref().map_or(0, WindowAgg::heap_bytes)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let agg = self.agg.as_ref();
        let stored = agg.map(WindowAgg::stored_sum);
        Ok(vec![
            ScalarValue::Int64(agg.map(|a| a.count)),
            ScalarValue::Float64(stored.map(|s| s.0)),
            ScalarValue::Float64(stored.map(|s| s.1)),
            ScalarValue::Float64(agg.map(|a| a.min)),
            ScalarValue::Float64(agg.map(|a| a.max)),
            ScalarValue::Binary(agg.and_then(WindowAgg::sketch).map(|s| {
                let mut bytes = Vec::new();
                s.encode(&mut bytes);
                bytes
            })),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let count = states[0].as_primitive::<Int64Type>();
        let float = |i: usize| states[i].as_primitive::<Float64Type>();
        let (sum, compensation, min, max) = (float(1), float(2), float(3), float(4));
        let sketches = states[5].as_binary::<i32>();
        for i in 0..count.len() {
            if count.is_null(i) {
                continue;
            }
            let (first, last) = ((0, min.value(i)), (0, max.value(i)));
            let sketch = match sketches.is_null(i) {
                true => None,
                false => Some(Sketch::decode(sketches.value(i)).map_err(|e| {
                    datafusion::common::DataFusionError::Internal(format!("a window's partial sketch: {e}"))
                })?),
            };
            self.merge(
                WindowAgg::from_stored(
                    count.value(i),
                    (sum.value(i), compensation.value(i)),
                    min.value(i),
                    max.value(i),
                    first,
                    last,
                )
                .with_sketch(sketch),
            );
        }
        Ok(())
    }
}
