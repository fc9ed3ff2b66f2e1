//! What PostgreSQL tools ask before their first query, answered in the one session every query uses (so HTTP, the
//! PostgreSQL protocol and Flight SQL see the same tables): `pg_catalog` and the functions clients call
//! (`current_schema()`, `has_table_privilege`, `format_type`, …) from `datafusion-pg-catalog`, DataFusion's own
//! `information_schema`, and `version()` in PostgreSQL's shape (clients parse its leading `PostgreSQL X.Y`).

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;

use super::SqlError;

/// The catalog (PostgreSQL's database) every table is in: `weir.public.readings`.
pub const CATALOG: &str = "weir";

/// The PostgreSQL version Weir reports: the protocol and catalog it follows.
pub const SERVER_VERSION: &str = "16.0";

/// The value of the server setting `name` (lower case), as PostgreSQL would answer `SHOW` or `current_setting()`
/// for a read-only UTC server; `None` for a setting it does not have. `statement_timeout` is `--sql-timeout`.
pub fn setting(name: &str, statement_timeout: std::time::Duration) -> Option<String> {
    let value = match name {
        "server_version" => SERVER_VERSION,
        "server_version_num" => "160000",
        "server_encoding" | "client_encoding" => "UTF8",
        "datestyle" => "ISO, MDY",
        "intervalstyle" => "postgres",
        "timezone" | "time zone" => "UTC",
        "integer_datetimes" | "standard_conforming_strings" => "on",
        "transaction isolation level" | "transaction_isolation" | "default_transaction_isolation" => "read committed",
        "transaction_read_only" | "default_transaction_read_only" => "on",
        "is_superuser" | "in_hot_standby" => "off",
        "search_path" => "\"$user\", public",
        "statement_timeout" => return Some(format!("{}ms", statement_timeout.as_millis())),
        "max_identifier_length" => "63",
        "lc_collate" | "lc_ctype" | "lc_messages" => "C",
        "extra_float_digits" => "1",
        "bytea_output" => "hex",
        _ => return None,
    };
    Some(value.to_owned())
}

/// Installs `pg_catalog` and the PostgreSQL functions into `ctx` (whose default catalog is [`CATALOG`]).
pub(super) fn install(ctx: &SessionContext, statement_timeout: std::time::Duration) -> Result<(), SqlError> {
    datafusion_pg_catalog::setup_pg_catalog(ctx, CATALOG, EmptyContextProvider)
        .map_err(|e| SqlError::Invalid(format!("cannot set up pg_catalog: {e}")))?;
    let version = format!(
        "PostgreSQL {SERVER_VERSION} (Weir {}, Apache DataFusion {})",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    );
    ctx.register_udf(create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(version.clone()))))),
    ));
    ctx.register_udf(create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args| current_setting(args, statement_timeout)),
    ));
    Ok(())
}

/// `current_setting(name)`: a setting's value; an unknown setting is an error, as in PostgreSQL.
fn current_setting(
    args: &[ColumnarValue],
    statement_timeout: std::time::Duration,
) -> datafusion::error::Result<ColumnarValue> {
    use arrow::array::{Array, StringArray};
    use datafusion::error::DataFusionError;
    let value = |name: &str| {
        setting(&name.to_ascii_lowercase(), statement_timeout)
            .ok_or_else(|| DataFusionError::Execution(format!("unrecognized configuration parameter \"{name}\"")))
    };
    match args {
        [
            ColumnarValue::Scalar(ScalarValue::Utf8(name) | ScalarValue::LargeUtf8(name) | ScalarValue::Utf8View(name)),
        ] => Ok(ColumnarValue::Scalar(ScalarValue::Utf8(name.as_deref().map(value).transpose()?))),
        [ColumnarValue::Array(names)] => {
            let names = arrow::compute::cast(names, &DataType::Utf8)?;
            let names = names.as_any().downcast_ref::<StringArray>().expect("cast to Utf8 gives a StringArray");
            let values: Vec<Option<String>> = (0..names.len())
                .map(|i| names.is_valid(i).then(|| value(names.value(i))).transpose())
                .collect::<datafusion::error::Result<_>>()?;
            Ok(ColumnarValue::Array(Arc::new(StringArray::from(values))))
        }
        _ => Err(DataFusionError::Plan("current_setting takes one argument: the setting's name".into())),
    }
}
