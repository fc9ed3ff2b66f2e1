//! `window_sum`, `window_mean`, `window_min`, `window_max`: SQL aggregates that fold values with the live windows'
//! own aggregate ([`WindowAgg`]), so that `windows_*` over days not yet rolled up give the numbers
//! `/api/v1/series` gives.
//!
//! Why not `sum`, `avg`, `min`, `max`: a window's sum is compensated (and scaled down for values near `f64::MAX`,
//! where it reports ±`f64::MAX` instead of overflowing to infinity), and its min and max order -0.0 before 0.0
//! (total order); SQL's plain aggregates differ from both in those cases, so the same window would answer
//! differently before and after its day's rollup is written. One aggregate, one set of numbers.
//!
//! The partial state is the window's stored form (count, stored sum and compensation, min, max), the one rollups
//! keep, merged with the same addition.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{Accumulator, AggregateUDF, Volatility, create_udaf};
use weir_operators::model::{DeviceId, SeriesKey};
use weir_operators::{Reading, WindowAgg};

/// What an aggregate reports of the window it folds.
#[derive(Debug, Clone, Copy)]
enum Statistic {
    Sum,
    Mean,
    Min,
    Max,
}

/// The four aggregates, to register with a session.
pub(crate) fn window_functions() -> Vec<AggregateUDF> {
    [
        ("window_sum", Statistic::Sum),
        ("window_mean", Statistic::Mean),
        ("window_min", Statistic::Min),
        ("window_max", Statistic::Max),
    ]
    .into_iter()
    .map(|(name, statistic)| {
        create_udaf(
            name,
            vec![DataType::Float64],
            Arc::new(DataType::Float64),
            Volatility::Immutable,
            Arc::new(move |_| Ok(Box::new(WindowAccumulator { agg: None, statistic }))),
            Arc::new(vec![DataType::Int64, DataType::Float64, DataType::Float64, DataType::Float64, DataType::Float64]),
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
        for value in values.iter().flatten() {
            match &mut self.agg {
                Some(agg) => agg.add(&reading(value)),
                None => self.agg = Some(WindowAgg::of(&reading(value))),
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(self.agg.map(|agg| match self.statistic {
            Statistic::Sum => agg.sum(),
            Statistic::Mean => agg.mean(),
            Statistic::Min => agg.min,
            Statistic::Max => agg.max,
        })))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
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
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let count = states[0].as_primitive::<Int64Type>();
        let float = |i: usize| states[i].as_primitive::<Float64Type>();
        let (sum, compensation, min, max) = (float(1), float(2), float(3), float(4));
        for i in 0..count.len() {
            if count.is_null(i) {
                continue;
            }
            let (first, last) = ((0, min.value(i)), (0, max.value(i)));
            self.merge(WindowAgg::from_stored(
                count.value(i),
                (sum.value(i), compensation.value(i)),
                min.value(i),
                max.value(i),
                first,
                last,
            ));
        }
        Ok(())
    }
}
