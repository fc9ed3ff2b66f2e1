//! String functions whose result size a query chooses, bounded: `repeat`, `lpad` and `rpad` refuse to build a value
//! larger than the query's memory limit.
//!
//! Why: DataFusion's memory pool accounts for sorts, joins and aggregations, not for the values a scalar function
//! returns. `length(repeat('x', 300000000))` took 1.25 GB under `--sql-memory 64MiB`. Each of these functions is
//! registered again under its own name, wrapping DataFusion's: before it runs, the size it would build (count ×
//! string length for `repeat`, the target length × 4 bytes for the pads) is checked against the limit.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// The wrappers of `repeat`, `lpad` and `rpad` for a query that may use `max_bytes`.
pub fn bounded_string_functions(max_bytes: usize) -> Vec<ScalarUDF> {
    use datafusion::functions::{string, unicode};
    vec![
        ScalarUDF::new_from_impl(Bounded { inner: string::repeat(), size: Size::RepeatCount, max_bytes }),
        ScalarUDF::new_from_impl(Bounded { inner: unicode::lpad(), size: Size::PadLength, max_bytes }),
        ScalarUDF::new_from_impl(Bounded { inner: unicode::rpad(), size: Size::PadLength, max_bytes }),
    ]
}

/// How the size of a result follows from the arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Size {
    /// `repeat(text, count)`: count × the text's length.
    RepeatCount,
    /// `lpad(text, length [, fill])`: up to 4 bytes per character of `length`.
    PadLength,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    size: Size,
    max_bytes: usize,
}

impl Bounded {
    /// The largest value of the numeric argument (the second), and the longest text (the first).
    fn largest(args: &[ColumnarValue]) -> (i64, usize) {
        let count = match args.get(1) {
            Some(ColumnarValue::Scalar(ScalarValue::Int64(Some(n)))) => *n,
            Some(ColumnarValue::Array(a)) => {
                a.as_primitive_opt::<Int64Type>().and_then(|a| a.iter().flatten().max()).unwrap_or(0)
            }
            _ => 0,
        };
        let text = match args.first() {
            Some(ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(t)) | ScalarValue::LargeUtf8(Some(t)) | ScalarValue::Utf8View(Some(t)),
            )) => t.len(),
            Some(ColumnarValue::Scalar(_)) => 0,
            Some(ColumnarValue::Array(a)) => match a.data_type() {
                DataType::Utf8 => a.as_string::<i32>().iter().flatten().map(str::len).max().unwrap_or(0),
                DataType::LargeUtf8 => a.as_string::<i64>().iter().flatten().map(str::len).max().unwrap_or(0),
                DataType::Utf8View => a.as_string_view().iter().flatten().map(str::len).max().unwrap_or(0),
                _ => 0,
            },
            None => 0,
        };
        (count, text)
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (count, text) = Self::largest(&args.args);
        let count = usize::try_from(count).unwrap_or(0);
        let bytes = match self.size {
            Size::RepeatCount => count.saturating_mul(text),
            Size::PadLength => count.saturating_mul(4),
        };
        if bytes > self.max_bytes {
            return exec_err!(
                "{}(…) would build a value of about {bytes} bytes, more than the query may use ({} bytes, \
                 --sql-memory)",
                self.name(),
                self.max_bytes
            );
        }
        self.inner.invoke_with_args(args)
    }
}
