//! The simple and extended query protocols over [`SqlService`].
//!
//! A statement is parsed once with `datafusion-pg-catalog`'s PostgreSQL compatibility parser (which rewrites what
//! clients' catalog queries use and DataFusion lacks: `::regclass` casts, `pg_catalog.` functions, …); a session
//! command ([`SessionCommand`]) is answered here, anything else goes as SQL text to the service, which checks it
//! like any HTTP query. Results are encoded row by row from the Arrow batches as they come (`arrow-pg`: text or
//! binary per column, PostgreSQL's type OIDs), so a million rows never sit in memory.
//!
//! Cancel requests: pgwire races the query against the cancel signal until the query's first batch is ready (the
//! response is returned only then), so a long query is cancelled while it computes; dropping the stream stops it.

use std::fmt::Debug;
use std::sync::Arc;

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures_util::{Sink, StreamExt, stream};
use pgwire::api::METADATA_APPLICATION_NAME;
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ConnectionManager, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::types::format::FormatOptions;
use weir_sinks::sql::{Described, SqlError};

use super::auth::Startup;
use super::session::{SessionCommand, setting};
use crate::auth::ApiKeys;
use crate::node::error::{ErrorKind, ServiceError};
use crate::node::sql::{QueryFailure, SqlService};

/// The PostgreSQL front of one Weir: shared by every connection.
pub struct WeirPg {
    sql: Arc<SqlService>,
    parser: Arc<WeirParser>,
    keys: ApiKeys,
    manager: Arc<ConnectionManager>,
    pub(super) cancel: Arc<DefaultCancelHandler>,
}

impl WeirPg {
    pub fn new(sql: Arc<SqlService>, keys: ApiKeys) -> WeirPg {
        let manager = Arc::new(ConnectionManager::new());
        WeirPg {
            parser: Arc::new(WeirParser { sql: sql.clone(), parser: PostgresCompatibilityParser::new() }),
            sql,
            keys,
            cancel: Arc::new(DefaultCancelHandler::new(manager.clone())),
            manager,
        }
    }

    /// The startup phase of a new connection (authentication keeps per-connection state); `tls`: the port takes
    /// only TLS connections.
    pub(super) fn startup(&self, tls: bool) -> Startup {
        Startup::new(&self.keys, self.manager.clone(), tls)
    }

    /// Answers one statement: a session command here, a query through the service.
    async fn answer<C: ClientInfo>(
        &self,
        client: &C,
        statement: &WeirStatement,
        params: Vec<ScalarValue>,
        format: &Format,
    ) -> PgWireResult<Response> {
        match statement {
            WeirStatement::Session(command) => self.session(client, command),
            WeirStatement::Query { sql, .. } => self.query(client, sql, params, format).await,
        }
    }

    /// Runs `sql` through the service and encodes its batches as they come.
    async fn query<C: ClientInfo>(
        &self,
        client: &C,
        sql: &str,
        params: Vec<ScalarValue>,
        format: &Format,
    ) -> PgWireResult<Response> {
        let mut rows = self.sql.stream(sql, params).await.map_err(failure)?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let fields = Arc::new(arrow_schema_to_pg_fields(&rows.schema, format, Some(options))?);
        // The first batch before answering: until then a cancel request stops the query.
        let first = rows.next().await.transpose().map_err(sql_error)?;
        let batches = stream::iter(first.map(Ok)).chain(rows.into_stream());
        let encode = fields.clone();
        let data = batches
            .map(move |batch| -> Box<dyn Iterator<Item = PgWireResult<_>> + Send + Sync> {
                match batch {
                    Ok(batch) => encode_recordbatch(encode.clone(), batch),
                    Err(e) => Box::new(std::iter::once(Err(sql_error(e)))),
                }
            })
            .flat_map(stream::iter);
        Ok(Response::Query(QueryResponse::new(fields, data)))
    }

    fn session<C: ClientInfo>(&self, client: &C, command: &SessionCommand) -> PgWireResult<Response> {
        Ok(match command {
            SessionCommand::Show(name) => {
                let timeout = self.sql.archive().limits().timeout;
                let application = client.metadata().get(METADATA_APPLICATION_NAME).map(String::as_str);
                let Some(value) = setting(name, application, timeout) else {
                    return Err(user_error("42704", format!("unrecognized configuration parameter \"{name}\"")));
                };
                let fields =
                    Arc::new(vec![FieldInfo::new(name.replace(' ', "_"), None, None, Type::TEXT, FieldFormat::Text)]);
                let mut row = DataRowEncoder::new(fields.clone());
                row.encode_field(&value)?;
                Response::Query(QueryResponse::new(fields, stream::iter([Ok(row.take_row())])))
            }
            SessionCommand::Begin => Response::TransactionStart(Tag::new(command.tag())),
            SessionCommand::Commit | SessionCommand::Rollback => Response::TransactionEnd(Tag::new(command.tag())),
            SessionCommand::Set | SessionCommand::Discard | SessionCommand::Deallocate => {
                Response::Execution(Tag::new(command.tag()))
            }
        })
    }
}

/// A parsed statement, kept by the extended protocol between Parse and Execute.
#[derive(Debug, Clone)]
pub enum WeirStatement {
    Session(SessionCommand),
    /// A query: its text as the engine reads it, and what it answers.
    Query {
        sql: String,
        described: Arc<Described>,
    },
}

/// Parses statements for both protocols.
pub struct WeirParser {
    sql: Arc<SqlService>,
    parser: PostgresCompatibilityParser,
}

impl WeirParser {
    /// The statements of `text`, each a session command or a query's text. Bounded by `--sql-max-query-bytes`
    /// before it is parsed.
    fn statements(&self, text: &str) -> PgWireResult<Vec<(Statement, Option<SessionCommand>)>> {
        let max = self.sql.archive().limits().max_query_bytes;
        if text.len() > max {
            return Err(user_error(
                "54000",
                format!("the query is {} bytes, more than the {max} allowed (--sql-max-query-bytes)", text.len()),
            ));
        }
        let statements = self.parser.parse(text).map_err(|e| user_error("42601", e.to_string()))?;
        Ok(statements
            .into_iter()
            .map(|s| {
                let command = SessionCommand::of(&s);
                (s, command)
            })
            .collect())
    }
}

#[async_trait]
impl QueryParser for WeirParser {
    type Statement = WeirStatement;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<WeirStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = self.statements(sql)?;
        if statements.len() > 1 {
            return Err(user_error("42601", "cannot insert multiple commands into a prepared statement"));
        }
        let Some((statement, command)) = statements.pop() else { return Ok(None) };
        if let Some(command) = command {
            return Ok(Some(WeirStatement::Session(command)));
        }
        let sql = statement.to_string();
        let described = self.sql.describe(&sql).await.map_err(failure)?;
        Ok(Some(WeirStatement::Query { sql, described: Arc::new(described) }))
    }

    fn get_parameter_types(&self, statement: &WeirStatement) -> PgWireResult<Vec<Type>> {
        match statement {
            WeirStatement::Session(_) => Ok(Vec::new()),
            WeirStatement::Query { described, .. } => {
                described.params.iter().map(|t| t.as_ref().map_or(Ok(Type::UNKNOWN), into_pg_type)).collect()
            }
        }
    }

    fn get_result_schema(&self, statement: &WeirStatement, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        match statement {
            WeirStatement::Session(SessionCommand::Show(name)) => {
                Ok(vec![FieldInfo::new(name.replace(' ', "_"), None, None, Type::TEXT, FieldFormat::Text)])
            }
            WeirStatement::Session(_) => Ok(Vec::new()),
            WeirStatement::Query { described, .. } => {
                arrow_schema_to_pg_fields(&described.schema, format.unwrap_or(&Format::UnifiedText), None)
            }
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for WeirPg {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self.parser.statements(query)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for (statement, command) in statements {
            responses.push(match command {
                Some(command) => self.session(client, &command)?,
                None => self.query(client, &statement.to_string(), Vec::new(), &Format::UnifiedText).await?,
            });
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for WeirPg {
    type Statement = WeirStatement;
    type QueryParser = WeirParser;

    fn query_parser(&self) -> Arc<WeirParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<WeirStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = WeirStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement = &portal.statement.statement;
        let params = match statement {
            WeirStatement::Session(_) => Vec::new(),
            WeirStatement::Query { described, .. } => {
                let types: Vec<Option<&arrow::datatypes::DataType>> =
                    described.params.iter().map(Option::as_ref).collect();
                match arrow_pg::datatypes::df::deserialize_parameters(portal, &types)? {
                    datafusion::common::ParamValues::List(values) => values.into_iter().map(|v| v.value).collect(),
                    datafusion::common::ParamValues::Map(_) => {
                        return Err(user_error("42P02", "named parameters are not supported: use $1, $2, …"));
                    }
                }
            }
        };
        self.answer(client, statement, params, &portal.result_column_format).await
    }
}

/// An error the client caused (`ERROR` with `code`).
fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".to_owned(), code.to_owned(), message.into())))
}

/// A query's failure as a PostgreSQL error with its SQLSTATE.
fn failure(e: QueryFailure) -> PgWireError {
    match e {
        QueryFailure::Sql(e) => sql_error(e),
        QueryFailure::Service(e) => service_error(e),
    }
}

fn sql_error(e: SqlError) -> PgWireError {
    let code = match &e {
        // read_only_sql_transaction: what PostgreSQL answers a write in a read-only transaction.
        SqlError::Refused(_) => "25006",
        SqlError::Syntax(_) => "42601",
        // syntax_error_or_access_rule_violation: unknown tables, columns, functions, type errors.
        SqlError::Invalid(_) => "42000",
        // query_canceled: what statement_timeout raises.
        SqlError::Timeout(_) => "57014",
        // program_limit_exceeded.
        SqlError::TooManyRows(_) => "54000",
        SqlError::Memory(_) => "53200",
        // too_many_connections: retry later.
        SqlError::Busy(_) => "53300",
    };
    user_error(code, e.to_string())
}

fn service_error(e: ServiceError) -> PgWireError {
    let code = match e.kind {
        ErrorKind::InvalidArgument => "22023",
        ErrorKind::TooLarge => "54000",
        ErrorKind::Timeout => "57014",
        // cannot_connect_now: the archive has not caught up, retry.
        ErrorKind::Unavailable => "57P03",
        ErrorKind::StorageFull => "53100",
        ErrorKind::Internal => "XX000",
        // Ingest's idempotency refusals (no query gives them): serialization_failure, unique_violation.
        ErrorKind::Conflict => "40001",
        ErrorKind::KeyReused => "23505",
        // too_many_connections is the nearest PostgreSQL has to a rate (no query gives it).
        ErrorKind::RateLimited => "53300",
    };
    user_error(code, e.message)
}
