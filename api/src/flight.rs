//! Arrow Flight SQL on the gRPC port: ADBC, DBeaver, Superset and Grafana's Flight SQL plugin read Weir's SQL as
//! Arrow record batches, without conversion.
//!
//! The same [`SqlService`] as every other transport answers: the same read-only checks, limits and session. A
//! statement's [`FlightInfo`] carries its schema (from `SqlService::describe`, nothing runs) and a ticket holding
//! the SQL text; `DoGet` on the ticket runs the query and streams its batches as they are made (`SqlStream`: a
//! slow reader holds its own query back, nothing is buffered beyond two batches; the encoder splits a batch into
//! messages of at most 2 MiB). Prepared statements keep their text and their bound parameters (`DoPut` of a
//! parameter batch) under a handle, at most [`MAX_PREPARED`] at once.
//!
//! Authentication: the API keys, as `authorization: Bearer KEY` (also `Basic` with the key as user name or
//! password, or `x-api-key`); the `Handshake` answers basic auth with the bearer token to use, which is the key.
//! Every call is checked. Writes (`DoPut` updates, ingest, transactions) are refused: Weir's SQL is read-only.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest,
    CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult, Nullable, ProstMessageExt, Searchable,
    SqlInfo, TicketStatementQuery, XdbcDataType,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc,
    Ticket,
};
use datafusion::scalar::ScalarValue;
use futures_util::{Stream, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{ApiKeys, Scope};
use crate::node::sql::{QueryFailure, SqlService};

/// Prepared statements open at once (over every client); more are refused until some are closed.
pub const MAX_PREPARED: usize = 1_024;

/// A prepared statement: its text, what it answers, and the parameters bound to it.
struct Prepared {
    sql: String,
    params: Vec<ScalarValue>,
}

/// The Flight SQL service.
pub struct WeirFlightSql {
    sql: Arc<SqlService>,
    keys: ApiKeys,
    prepared: std::sync::Mutex<HashMap<Vec<u8>, Prepared>>,
    next_handle: AtomicU64,
    info: SqlInfoData,
    types: XdbcTypeInfoData,
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

impl WeirFlightSql {
    pub fn new(sql: Arc<SqlService>, keys: ApiKeys) -> Self {
        WeirFlightSql {
            sql,
            keys,
            prepared: Default::default(),
            next_handle: AtomicU64::new(1),
            info: sql_info(),
            types: xdbc_types(),
        }
    }

    /// Every call needs a key with the `sql` scope, by the rule of every port ([`ApiKeys::admit`]).
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let admitted = self.keys.admit_headers(&request.metadata().clone().into_headers(), Scope::Sql);
        admitted.map(drop).map_err(crate::auth::Refusal::into_status)
    }

    /// A `FlightInfo` for a query: its schema and one endpoint whose ticket is `ticket`.
    fn info_for(
        schema: &Schema,
        ticket: impl ProstMessageExt,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let schema = &as_sent(schema);
        let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        Ok(FlightInfo::new()
            .try_with_schema(schema)
            .map_err(|e| Status::internal(format!("cannot encode the schema: {e}")))?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor)
            .with_ordered(true))
    }

    /// Runs `sql` and streams its batches.
    async fn run(&self, sql: &str, params: Vec<ScalarValue>) -> Result<Response<DoGetStream>, Status> {
        let stream = self.sql.stream(sql, params).await.map_err(status)?;
        let schema = stream.schema.clone();
        let batches = stream.into_stream().map_err(|e| FlightError::Tonic(Box::new(status(QueryFailure::Sql(e)))));
        let data = FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map_err(Status::from);
        Ok(Response::new(Box::pin(data)))
    }

    /// A catalog answer (one batch) as a stream.
    fn one_batch(schema: SchemaRef, batch: Result<RecordBatch, FlightError>) -> Response<DoGetStream> {
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures_util::stream::once(async move { batch }))
            .map_err(Status::from);
        Response::new(Box::pin(data))
    }

    fn prepared_sql(&self, handle: &[u8]) -> Result<(String, Vec<ScalarValue>), Status> {
        let prepared = self.prepared.lock().expect("the prepared statements' lock is never poisoned");
        let p = prepared
            .get(handle)
            .ok_or_else(|| Status::not_found("no such prepared statement (closed, or never created here)"))?;
        Ok((p.sql.clone(), p.params.clone()))
    }

    /// The tables of `weir.public`, with their schemas.
    async fn tables(&self) -> Result<Vec<(String, String, SchemaRef)>, Status> {
        let listing = self
            .sql
            .stream(
                "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'public' \
                 ORDER BY table_name",
                Vec::new(),
            )
            .await
            .map_err(status)?
            .collect()
            .await
            .map_err(|e| status(QueryFailure::Sql(e)))?;
        let mut tables = Vec::new();
        for batch in &listing.batches {
            let names = arrow::compute::cast(batch.column(0), &DataType::Utf8).map_err(arrow_status)?;
            let kinds = arrow::compute::cast(batch.column(1), &DataType::Utf8).map_err(arrow_status)?;
            let names = names.as_any().downcast_ref::<arrow::array::StringArray>().expect("cast to Utf8");
            let kinds = kinds.as_any().downcast_ref::<arrow::array::StringArray>().expect("cast to Utf8");
            for i in 0..batch.num_rows() {
                let name = names.value(i).to_owned();
                let kind = if kinds.value(i) == "VIEW" { "VIEW" } else { "TABLE" };
                let schema = self.sql.describe(&format!("SELECT * FROM \"{name}\"")).await.map_err(status)?.schema;
                tables.push((name, kind.to_owned(), schema));
            }
        }
        Ok(tables)
    }
}

#[tonic::async_trait]
impl FlightSqlService for WeirFlightSql {
    type FlightService = WeirFlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        self.authorize(&request)?;
        // The bearer token to send from now on is the key that was accepted (basic auth's user name or password).
        let headers = request.metadata().clone().into_headers();
        let token = crate::auth::basic_auth(&headers)
            .and_then(|(user, password)| {
                [user, password].into_iter().find(|k| self.keys.authenticate(k).is_some_and(|p| p.may(Scope::Sql)))
            })
            .unwrap_or_default();
        let answer = HandshakeResponse { protocol_version: 0, payload: token.clone().into() };
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(futures_util::stream::iter([Ok(answer)])));
        if !token.is_empty()
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            response.metadata_mut().insert("authorization", value);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let described = self.sql.describe(&query.query).await.map_err(status)?;
        let ticket = TicketStatementQuery { statement_handle: query.query.into_bytes().into() };
        Ok(Response::new(Self::info_for(&described.schema, ticket, request.into_inner())?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.authorize(&request)?;
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("the ticket is not a statement of this server"))?;
        self.run(&sql, Vec::new()).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        self.authorize(&request)?;
        let described = self.sql.describe(&query.query).await.map_err(status)?;
        let params = Schema::new(
            described
                .params
                .iter()
                .enumerate()
                .map(|(i, t)| Field::new(format!("${}", i + 1), t.clone().unwrap_or(DataType::Utf8), true))
                .collect::<Vec<_>>(),
        );
        let handle = {
            let mut prepared = self.prepared.lock().expect("the prepared statements' lock is never poisoned");
            if prepared.len() >= MAX_PREPARED {
                return Err(Status::resource_exhausted(format!(
                    "{MAX_PREPARED} prepared statements are open: close some (ClosePreparedStatement) first"
                )));
            }
            let handle = format!("weir-{}", self.next_handle.fetch_add(1, Ordering::Relaxed)).into_bytes();
            prepared.insert(handle.clone(), Prepared { sql: query.query, params: Vec::new() });
            handle
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema: schema_bytes(&as_sent(&described.schema))?,
            parameter_schema: schema_bytes(&params)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        self.authorize(&request)?;
        let handle = query.prepared_statement_handle.to_vec();
        self.prepared_sql(&handle)?;
        let data = request.into_inner().map_err(FlightError::from);
        let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data);
        let mut params = Vec::new();
        // The parameters are the first row of the first batch (one execution per DoPut).
        if let Some(batch) = batches.try_next().await.map_err(Status::from)?
            && batch.num_rows() > 0
        {
            for column in batch.columns() {
                params
                    .push(ScalarValue::try_from_array(column, 0).map_err(|e| Status::invalid_argument(e.to_string()))?);
            }
        }
        let mut prepared = self.prepared.lock().expect("the prepared statements' lock is never poisoned");
        if let Some(p) = prepared.get_mut(&handle) {
            p.params = params;
        }
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(handle.into()) })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let (sql, _) = self.prepared_sql(&query.prepared_statement_handle)?;
        let described = self.sql.describe(&sql).await.map_err(status)?;
        Ok(Response::new(Self::info_for(&described.schema, query, request.into_inner())?))
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.authorize(&request)?;
        let (sql, params) = self.prepared_sql(&query.prepared_statement_handle)?;
        self.run(&sql, params).await
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        self.authorize(&request)?;
        self.prepared
            .lock()
            .expect("the prepared statements' lock is never poisoned")
            .remove(query.prepared_statement_handle.as_ref());
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let schema = query.into_builder().schema();
        Ok(Response::new(Self::info_for(&schema, query, request.into_inner())?))
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.authorize(&request)?;
        let mut builder = query.into_builder();
        builder.append(weir_sinks::sql::CATALOG);
        Ok(Self::one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(Self::info_for(&schema, query, request.into_inner())?))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.authorize(&request)?;
        let mut builder = query.into_builder();
        builder.append(weir_sinks::sql::CATALOG, "public");
        Ok(Self::one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let schema = query.clone().into_builder().schema();
        Ok(Response::new(Self::info_for(&schema, query, request.into_inner())?))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.authorize(&request)?;
        let tables = self.tables().await?;
        let mut builder = query.into_builder();
        for (name, kind, schema) in tables {
            builder.append(weir_sinks::sql::CATALOG, "public", name, kind, &as_sent(&schema)).map_err(Status::from)?;
        }
        Ok(Self::one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(Self::info_for(&table_types_schema(), query, request.into_inner())?))
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.authorize(&request)?;
        let schema = table_types_schema();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::StringArray::from(vec!["TABLE", "VIEW"]))],
        )
        .map_err(FlightError::Arrow);
        Ok(Self::one_batch(schema, batch))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let schema = query.clone().into_builder(&self.info).schema();
        Ok(Response::new(Self::info_for(&schema, query, request.into_inner())?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.authorize(&request)?;
        let builder = query.into_builder(&self.info);
        Ok(Self::one_batch(builder.schema(), builder.build()))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let schema = query.into_builder(&self.types).schema();
        Ok(Response::new(Self::info_for(&schema, query, request.into_inner())?))
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.authorize(&request)?;
        let builder = query.into_builder(&self.types);
        Ok(Self::one_batch(builder.schema(), builder.build()))
    }

    async fn do_put_statement_update(
        &self,
        _query: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only())
    }

    async fn do_put_statement_ingest(
        &self,
        _query: CommandStatementIngest,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only())
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only())
    }

    async fn do_get_fallback(&self, request: Request<Ticket>, message: Any) -> Result<Response<DoGetStream>, Status> {
        self.authorize(&request)?;
        Err(Status::unimplemented(format!("Weir does not answer {}", message.type_url)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

fn read_only() -> Status {
    Status::permission_denied(
        "Weir's SQL is read-only: updates and ingest through Flight SQL are refused; write readings with \
         POST /ingest or the gRPC Ingest call",
    )
}

fn arrow_status(e: arrow::error::ArrowError) -> Status {
    Status::internal(e.to_string())
}

/// A query's failure as a gRPC status: the same codes as the `Sql` call.
fn status(e: QueryFailure) -> Status {
    crate::node::error::ServiceError::from(e).into()
}

/// `schema` as the encoder sends it: dictionary columns as their values (the encoder hydrates dictionaries, which
/// every Flight client reads; announcing the dictionary type instead makes clients reject the stream).
fn as_sent(schema: &Schema) -> Schema {
    let fields = schema.fields().iter().map(|f| match f.data_type() {
        DataType::Dictionary(_, values) => f.as_ref().clone().with_data_type(values.as_ref().clone()),
        _ => f.as_ref().clone(),
    });
    Schema::new_with_metadata(fields.collect::<Vec<_>>(), schema.metadata().clone())
}

fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &arrow::ipc::writer::IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(format!("cannot encode the schema: {e}")))?;
    Ok(bytes)
}

fn table_types_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("table_type", DataType::Utf8, false)]))
}

/// What the server says of itself (`GetSqlInfo`).
fn sql_info() -> SqlInfoData {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "Weir");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    builder.append(SqlInfo::FlightSqlServerReadOnly, true);
    builder.append(SqlInfo::FlightSqlServerSql, true);
    builder.append(SqlInfo::FlightSqlServerSubstrait, false);
    builder.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    builder.append(SqlInfo::FlightSqlServerCancel, false);
    builder.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    builder.append(SqlInfo::SqlDdlCatalog, false);
    builder.append(SqlInfo::SqlDdlSchema, false);
    builder.append(SqlInfo::SqlDdlTable, false);
    builder.build().expect("the server's SQL info is well formed")
}

/// The column types Weir's tables use (`GetXdbcTypeInfo`).
fn xdbc_types() -> XdbcTypeInfoData {
    let mut builder = XdbcTypeInfoDataBuilder::new();
    let mut add = |name: &str, data_type: XdbcDataType, column_size: Option<i32>| {
        builder.append(XdbcTypeInfo {
            type_name: name.into(),
            data_type,
            column_size,
            literal_prefix: matches!(data_type, XdbcDataType::XdbcVarchar | XdbcDataType::XdbcTimestamp)
                .then(|| "'".into()),
            literal_suffix: matches!(data_type, XdbcDataType::XdbcVarchar | XdbcDataType::XdbcTimestamp)
                .then(|| "'".into()),
            create_params: None,
            nullable: Nullable::NullabilityNullable,
            case_sensitive: matches!(data_type, XdbcDataType::XdbcVarchar),
            searchable: Searchable::Full,
            unsigned_attribute: Some(false),
            fixed_prec_scale: false,
            auto_increment: Some(false),
            local_type_name: Some(name.into()),
            minimum_scale: None,
            maximum_scale: None,
            sql_data_type: data_type,
            datetime_subcode: None,
            num_prec_radix: matches!(data_type, XdbcDataType::XdbcBigint | XdbcDataType::XdbcDouble).then_some(2),
            interval_precision: None,
        });
    };
    add("VARCHAR", XdbcDataType::XdbcVarchar, None);
    add("BIGINT", XdbcDataType::XdbcBigint, Some(64));
    add("DOUBLE", XdbcDataType::XdbcDouble, Some(53));
    add("TIMESTAMP", XdbcDataType::XdbcTimestamp, None);
    builder.build().expect("the server's type info is well formed")
}
