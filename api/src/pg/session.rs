//! The session statements clients send around their queries — `SET`, `SHOW`, transactions, `DISCARD`,
//! `DEALLOCATE` — answered here, without the engine: Weir has no session state a client could change, and every
//! query is read-only, so these are accepted (and have no effect) rather than refused, as clients expect.

use datafusion::sql::sqlparser::ast::Statement;

/// A statement answered by the session itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// `SET x = …`, `SET SESSION …`, `RESET`: accepted, no effect (Weir's settings are the server's).
    Set,
    /// `SHOW x`: the setting's value, as PostgreSQL would answer for a read-only UTC server.
    Show(String),
    /// `BEGIN`, `START TRANSACTION`: every query is read-only, so a transaction is a list of queries.
    Begin,
    /// `COMMIT`, `END`.
    Commit,
    /// `ROLLBACK`, `ABORT`.
    Rollback,
    /// `DISCARD ALL` and the like (connection poolers send it).
    Discard,
    /// `DEALLOCATE name`: prepared statements are forgotten by the protocol's Close.
    Deallocate,
}

impl SessionCommand {
    /// The session command `statement` is, if it is one.
    pub fn of(statement: &Statement) -> Option<SessionCommand> {
        Some(match statement {
            Statement::Set(_) => SessionCommand::Set,
            Statement::ShowVariable { variable } => SessionCommand::Show(
                variable.iter().map(|i| i.value.to_ascii_lowercase()).collect::<Vec<_>>().join(" "),
            ),
            Statement::StartTransaction { .. } => SessionCommand::Begin,
            Statement::Commit { .. } => SessionCommand::Commit,
            Statement::Rollback { .. } => SessionCommand::Rollback,
            Statement::Discard { .. } => SessionCommand::Discard,
            Statement::Deallocate { .. } => SessionCommand::Deallocate,
            _ => return None,
        })
    }

    /// The command tag PostgreSQL answers with.
    pub fn tag(&self) -> &'static str {
        match self {
            SessionCommand::Set => "SET",
            SessionCommand::Show(_) => "SHOW",
            SessionCommand::Begin => "BEGIN",
            SessionCommand::Commit => "COMMIT",
            SessionCommand::Rollback => "ROLLBACK",
            SessionCommand::Discard => "DISCARD ALL",
            SessionCommand::Deallocate => "DEALLOCATE",
        }
    }
}

/// The value `SHOW name` answers, `None` for a setting PostgreSQL does not have (SQLSTATE 42704): the server's
/// settings (`weir_sinks::sql::setting`, which `current_setting()` answers too) and the client's application name.
pub fn setting(name: &str, application_name: Option<&str>, statement_timeout: std::time::Duration) -> Option<String> {
    match name {
        "application_name" => Some(application_name.unwrap_or("").to_owned()),
        name => weir_sinks::sql::setting(name, statement_timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn command(sql: &str) -> Option<SessionCommand> {
        SessionCommand::of(&Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap()[0])
    }

    #[test]
    fn what_clients_send_before_their_first_query_is_a_session_command() {
        assert_eq!(command("SET extra_float_digits = 3"), Some(SessionCommand::Set));
        assert_eq!(command("SET application_name = 'PostgreSQL JDBC Driver'"), Some(SessionCommand::Set));
        assert_eq!(command("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"), Some(SessionCommand::Set));
        assert_eq!(
            command("SHOW TRANSACTION ISOLATION LEVEL"),
            Some(SessionCommand::Show("transaction isolation level".into()))
        );
        assert_eq!(command("show search_path"), Some(SessionCommand::Show("search_path".into())));
        assert_eq!(command("BEGIN"), Some(SessionCommand::Begin));
        assert_eq!(command("BEGIN READ ONLY"), Some(SessionCommand::Begin));
        assert_eq!(command("COMMIT"), Some(SessionCommand::Commit));
        assert_eq!(command("ROLLBACK"), Some(SessionCommand::Rollback));
        assert_eq!(command("DISCARD ALL"), Some(SessionCommand::Discard));
        assert_eq!(command("SELECT 1"), None);
        assert_eq!(command("INSERT INTO readings VALUES (1)"), None);
    }

    #[test]
    fn settings_answer_like_a_read_only_utc_postgresql() {
        let t = std::time::Duration::from_secs(30);
        assert_eq!(setting("server_version", None, t).as_deref(), Some(weir_sinks::sql::SERVER_VERSION));
        assert_eq!(setting("timezone", None, t).as_deref(), Some("UTC"));
        assert_eq!(setting("transaction_read_only", None, t).as_deref(), Some("on"));
        assert_eq!(setting("statement_timeout", None, t).as_deref(), Some("30000ms"));
        assert_eq!(setting("application_name", Some("psql"), t).as_deref(), Some("psql"));
        assert_eq!(setting("no_such_setting", None, t), None);
    }
}
