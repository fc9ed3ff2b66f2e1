//! `floor` over a column of `Float64` with the processor's rounding instruction, not a call per value.
//!
//! Why: the archive's grouping queries bucket time with `floor(extract(epoch FROM timestamp) / 900)`. The build
//! targets baseline x86-64, which has no rounding instruction (`roundpd` is SSE4.1), so DataFusion's `floor`
//! calls a function for every value: 6 % of the partitions' CPU in the 15-minute-means query of
//! `benches/sql-vs-duckdb.sh` (`benches/RESULTS.md`, "Issue 19, 2 and 3"). Here a whole column is rounded in one
//! function compiled for SSE4.1 (two values an instruction), chosen when the processor has it (every x86-64 since
//! 2008; the check is cached); otherwise, and for every other argument (a scalar, `Float32`, decimals),
//! DataFusion's own `floor` answers.
//!
//! The function is registered again under its own name and delegates every other question (signature, return
//! type, simplification, the preimage that rewrites `floor(x) = c` into a range, ordering, bounds) to DataFusion's,
//! so that plans are the same; the property test checks the values are the same, bit for bit, NaNs, infinities,
//! signed zeros and numbers beyond 2⁵² included.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{DataType, FieldRef, Float64Type};
use datafusion::common::{ExprSchema, Result, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, StructFieldMapping,
};

/// DataFusion's `floor`, with columns of `Float64` rounded in one vector loop.
pub fn fast_floor() -> ScalarUDF {
    ScalarUDF::new_from_impl(FastFloor { inner: datafusion::functions::math::floor() })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct FastFloor {
    inner: Arc<ScalarUDF>,
}

impl FastFloor {
    /// DataFusion's `floor`, which answers every question but the one this module is for.
    fn imp(&self) -> &dyn ScalarUDFImpl {
        self.inner.inner().as_ref()
    }
}

/// Rounds every value of `values` down, or `None` where the processor cannot do it in one instruction.
fn floor_column(values: &[f64]) -> Option<Vec<f64>> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.1") {
        // SAFETY: the processor has SSE4.1, checked just above.
        return Some(unsafe { floor_sse41(values) });
    }
    let _ = values;
    None
}

/// `f64::floor` of each value, compiled where `floor` is one instruction (`roundpd`), so the loop is vectorised.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.1")]
fn floor_sse41(values: &[f64]) -> Vec<f64> {
    values.iter().map(|v| v.floor()).collect()
}

#[warn(clippy::missing_trait_methods)] // Delegates, so it implements every trait method.
impl ScalarUDFImpl for FastFloor {
    fn name(&self) -> &str {
        self.imp().name()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        #[expect(deprecated)]
        self.imp().display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.imp().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.imp().signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.imp().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.imp().return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        #[expect(deprecated)]
        self.imp().is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.imp().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let [ColumnarValue::Array(array)] = args.args.as_slice()
            && let Some(column) = array.as_primitive_opt::<Float64Type>()
            && let Some(floored) = floor_column(column.values())
        {
            let floored = Float64Array::new(ScalarBuffer::from(floored), column.nulls().cloned());
            return Ok(ColumnarValue::Array(Arc::new(floored)));
        }
        self.imp().invoke_with_args(args)
    }

    fn with_updated_config(&self, _config: &ConfigOptions) -> Option<ScalarUDF> {
        None
    }

    fn aliases(&self) -> &[String] {
        self.imp().aliases()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.imp().simplify(args, info)
    }

    fn preimage(&self, args: &[Expr], lit_expr: &Expr, info: &SimplifyContext) -> Result<PreimageResult> {
        self.imp().preimage(args, lit_expr, info)
    }

    fn conditional_arguments<'a>(&self, args: &'a [Expr]) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.imp().conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.imp().short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.imp().evaluate_bounds(input)
    }

    fn propagate_constraints(&self, interval: &Interval, inputs: &[&Interval]) -> Result<Option<Vec<Interval>>> {
        self.imp().propagate_constraints(interval, inputs)
    }

    fn struct_field_mapping(&self, literal_args: &[Option<ScalarValue>]) -> Option<StructFieldMapping> {
        self.imp().struct_field_mapping(literal_args)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.imp().output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.imp().preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.imp().strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.imp().coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.imp().documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.imp().placement(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;
    use proptest::prelude::*;

    /// Calls `udf` on one column, as a plan does.
    fn call(udf: &ScalarUDF, column: Float64Array) -> Float64Array {
        let rows = column.len();
        let args = ScalarFunctionArgs {
            args: vec![ColumnarValue::Array(Arc::new(column))],
            arg_fields: vec![Arc::new(Field::new("x", DataType::Float64, true))],
            number_rows: rows,
            return_field: Arc::new(Field::new("floor", DataType::Float64, true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        match udf.invoke_with_args(args).expect("floor of a Float64 column") {
            ColumnarValue::Array(a) => a.as_primitive::<Float64Type>().clone(),
            ColumnarValue::Scalar(s) => panic!("a column gave a scalar: {s}"),
        }
    }

    /// The same float, bit for bit (the sign of a zero included), any NaN being the same as any other (a NaN's
    /// payload is not a value: ingest refuses NaNs, and a computation may quiet them).
    fn same(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    /// Values chosen to break a rounding shortcut: signed zeros, NaN, infinities, halves, the edges of 2⁵² (above
    /// which every float is whole) and of i64, subnormals and the largest finite floats.
    fn edge_cases() -> Vec<f64> {
        let mut values = vec![
            0.0,
            -0.0,
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.5,
            -0.5,
            1.5,
            -1.5,
            4_503_599_627_370_496.0, // 2^52
            4_503_599_627_370_495.5,
            -4_503_599_627_370_495.5,
            9_223_372_036_854_775_807.0,
            -9_223_372_036_854_775_808.0,
            1e300,
            -1e300,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            5e-324,
            -5e-324,
            1.7e9 / 900.0,
            -1.7e9 / 900.0,
        ];
        values.extend(values.clone().iter().map(|v| v.next_up()));
        values
    }

    #[test]
    fn a_column_of_edge_cases_rounds_as_datafusions_floor_does() {
        let column = Float64Array::from(edge_cases());
        let fast = call(&fast_floor(), column.clone());
        let reference = call(&datafusion::functions::math::floor(), column);
        for (i, (f, r)) in fast.values().iter().zip(reference.values()).enumerate() {
            assert!(same(*f, *r), "value {i} ({}): {f} against {r}", edge_cases()[i]);
        }
    }

    #[test]
    fn nulls_stay_null() {
        let column = Float64Array::from(vec![Some(1.5), None, Some(-2.5), None]);
        let floored = call(&fast_floor(), column);
        assert_eq!(floored.iter().collect::<Vec<_>>(), vec![Some(1.0), None, Some(-3.0), None]);
    }

    #[test]
    fn it_is_registered_as_floor_with_floors_signature() {
        let (fast, reference) = (fast_floor(), datafusion::functions::math::floor());
        assert_eq!(fast.name(), "floor");
        assert_eq!(fast.signature(), reference.signature());
        assert_eq!(fast.return_type(&[DataType::Float32]).unwrap(), DataType::Float32);
    }

    proptest! {
        #[test]
        fn any_floats_round_as_datafusions_floor_does(
            bits in proptest::collection::vec(any::<u64>(), 0..300),
            nulls in proptest::collection::vec(any::<bool>(), 300),
        ) {
            let values: Vec<Option<f64>> =
                bits.iter().zip(&nulls).map(|(b, null)| (!null).then_some(f64::from_bits(*b))).collect();
            let column = Float64Array::from(values);
            let fast = call(&fast_floor(), column.clone());
            let reference = call(&datafusion::functions::math::floor(), column);
            prop_assert_eq!(fast.nulls(), reference.nulls());
            for (i, (f, r)) in fast.iter().zip(reference.iter()).enumerate() {
                prop_assert!(f.zip(r).map_or(f.is_none() && r.is_none(), |(f, r)| same(f, r)), "value {}: {:?} against {:?}", i, f, r);
            }
        }
    }
}
