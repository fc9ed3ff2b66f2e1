//! Arrow Flight SQL through the real binary, with arrow-flight's own Flight SQL client: statement queries whose
//! batches agree with the announced schema, prepared statements with a bound parameter, catalog calls, keys
//! (handshake, bearer, a wrong key), refused writes. (ADBC with pyarrow, a million rows: `scripts/clients.sh`.)

mod support;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables};
use arrow_flight::{FlightInfo, error::FlightError};
use futures_util::TryStreamExt;
use std::sync::Arc;
use support::*;
use tonic::transport::Channel;

const KEY: &str = "flight-test-key";

async fn client(server: &Server) -> FlightSqlServiceClient<Channel> {
    let url = server.grpc_url.clone().expect("the gRPC port");
    FlightSqlServiceClient::new(Channel::from_shared(url).unwrap().connect().await.unwrap())
}

async fn fetch(c: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Vec<RecordBatch> {
    let schema = info.clone().try_decode_schema().unwrap();
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let stream = c.do_get(endpoint.ticket.unwrap()).await.unwrap();
        for batch in stream.try_collect::<Vec<_>>().await.unwrap() {
            assert_eq!(batch.schema().fields(), schema.fields(), "batches have the announced schema");
            batches.push(batch);
        }
    }
    batches
}

fn status_code(e: FlightError) -> tonic::Code {
    match e {
        FlightError::Tonic(status) => status.code(),
        other => panic!("not a gRPC status: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_clients_query_prepare_browse_and_are_refused_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--api-key", KEY, "--archive-flush-age", "200ms"]);
    let lines = (0..50)
        .map(|i| {
            format!(
                r#"{{"sensor":"speed","value":{i}.5,"timestamp":"2026-11-18T00:00:{:02}Z","device":"truck-{}"}}"#,
                i % 60,
                i % 5
            )
        })
        .collect::<Vec<_>>();
    let r = support::client()
        .post(format!("{}/ingest", server.url))
        .basic_auth(KEY, Some(""))
        .header("content-type", NDJSON)
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // No key: refused. A wrong key in the handshake: refused. The right one: a bearer token for what follows.
    let mut c = client(&server).await;
    let refused = c.execute("SELECT 1".into(), None).await.unwrap_err();
    assert_eq!(status_code(refused), tonic::Code::Unauthenticated);
    assert!(c.handshake("weir", "not-the-key").await.is_err());
    c.handshake("weir", KEY).await.unwrap();
    assert_eq!(c.token().map(String::as_str), Some(KEY));

    // A statement: dictionary columns arrive as strings, in the schema the FlightInfo announced.
    let info = c
        .execute("SELECT device, value FROM readings WHERE device = 'truck-3' ORDER BY value".into(), None)
        .await
        .unwrap();
    assert_eq!(info.clone().try_decode_schema().unwrap().field(0).data_type(), &DataType::Utf8);
    let batches = fetch(&mut c, info).await;
    let values: Vec<f64> = batches
        .iter()
        .flat_map(|b| b.column(1).as_any().downcast_ref::<Float64Array>().unwrap().values().to_vec())
        .collect();
    assert_eq!(values, (0..10).map(|k| (5 * k + 3) as f64 + 0.5).collect::<Vec<_>>());

    // A prepared statement with a parameter, run with two values.
    let mut prepared = c.prepare("SELECT count(*) AS n FROM readings WHERE device = $1".into(), None).await.unwrap();
    for (device, expected) in [("truck-1", 10), ("truck-9", 0)] {
        let schema = Arc::new(Schema::new(vec![Field::new("$1", DataType::Utf8, true)]));
        let params = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec![device]))]).unwrap();
        prepared.set_parameters(params).unwrap();
        let info = prepared.execute().await.unwrap();
        let batches = fetch(&mut c, info).await;
        let n = batches[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
        assert_eq!(n, expected, "{device}");
    }
    prepared.close().await.unwrap();

    // Catalog calls.
    let info = c.get_catalogs().await.unwrap();
    let catalogs = fetch(&mut c, info).await;
    let catalog = catalogs[0].column(0).as_any().downcast_ref::<StringArray>().unwrap().value(0).to_owned();
    assert_eq!(catalog, "weir");
    let info = c.get_db_schemas(CommandGetDbSchemas::default()).await.unwrap();
    let schemas = fetch(&mut c, info).await;
    assert_eq!(schemas[0].num_rows(), 1);
    let request = CommandGetTables { include_schema: true, ..Default::default() };
    let info = c.get_tables(request).await.unwrap();
    let tables = fetch(&mut c, info).await;
    let names = tables[0].column(2).as_any().downcast_ref::<StringArray>().unwrap();
    let names: Vec<&str> = (0..names.len()).map(|i| names.value(i)).collect();
    assert!(names.contains(&"readings") && names.contains(&"seals"), "{names:?}");

    // Writes are refused, as queries and as updates.
    let write = c.execute("DELETE FROM readings".into(), None).await.unwrap_err();
    assert_eq!(status_code(write), tonic::Code::InvalidArgument);
    let update = c.execute_update("DELETE FROM readings".into(), None).await.unwrap_err();
    assert_eq!(status_code(update), tonic::Code::PermissionDenied);
    server.stop();
}
