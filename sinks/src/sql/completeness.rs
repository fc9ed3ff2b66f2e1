//! `window_expected(sensor, window_start, width)` and `window_completeness(count, expected)`: the `expected` and
//! `completeness` columns of the `windows_*` views, computed at query time by the one rule of
//! [`weir_operators::completeness`] and the process's `--expected-interval`, as `/api/v1/series` computes them.
//!
//! Why at query time and not stored in the rollups: both follow from the count and the declared interval, so a
//! stored value would go stale when an operator corrects an interval, and the same window would then answer two
//! ways (live and sealed). Computed here, every window of every day is judged by the intervals in force.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use weir_operators::Width;
use weir_operators::completeness::{ExpectedIntervals, completeness};

/// The two functions, judging by `intervals`.
pub(crate) fn completeness_functions(intervals: &ExpectedIntervals) -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::new_from_impl(WindowExpected {
            intervals: intervals.clone(),
            signature: Signature::any(3, Volatility::Volatile),
        }),
        ScalarUDF::new_from_impl(WindowCompleteness { signature: Signature::any(2, Volatility::Immutable) }),
    ]
}

/// `window_expected(sensor, window_start, width)`: readings the window should hold by now.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowExpected {
    intervals: ExpectedIntervals,
    signature: Signature,
}

impl ScalarUDFImpl for WindowExpected {
    fn name(&self) -> &str {
        "window_expected"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [sensor, start, width] = arrays.as_slice() else {
            return exec_err!("window_expected takes (sensor, window_start, width)");
        };
        let sensor = cast(sensor, &DataType::Utf8)?;
        let start = cast(start, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let width = cast(width, &DataType::Utf8)?;
        let (sensor, start, width) =
            (sensor.as_string::<i32>(), start.as_primitive::<TimestampMicrosecondType>(), width.as_string::<i32>());
        let now = now_micros();
        let mut expected = Vec::with_capacity(sensor.len());
        for i in 0..sensor.len() {
            if sensor.is_null(i) || start.is_null(i) || width.is_null(i) {
                expected.push(None);
                continue;
            }
            let Some(w) = Width::parse(width.value(i)) else {
                return exec_err!("window_expected: unknown width {:?}: use 1m, 15m, 1h or 1d", width.value(i));
            };
            expected.push(self.intervals.expected(sensor.value(i), w, start.value(i), now));
        }
        Ok(ColumnarValue::Array(Arc::new(Float64Array::from(expected)) as ArrayRef))
    }
}

/// `window_completeness(count, expected)`: `min(1, count / expected)`, null where nothing is expected.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowCompleteness {
    signature: Signature,
}

impl ScalarUDFImpl for WindowCompleteness {
    fn name(&self) -> &str {
        "window_completeness"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [count, expected] = arrays.as_slice() else {
            return exec_err!("window_completeness takes (count, expected)");
        };
        let count = cast(count, &DataType::Int64)?;
        let expected = cast(expected, &DataType::Float64)?;
        let (count, expected) = (count.as_primitive::<Int64Type>(), expected.as_primitive::<Float64Type>());
        let values: Float64Array = (0..count.len())
            .map(|i| {
                if count.is_null(i) {
                    None
                } else {
                    completeness(count.value(i), expected.is_valid(i).then(|| expected.value(i)))
                }
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(values) as ArrayRef))
    }
}

fn now_micros() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}
