//! The engine started in-process, without a transport: a [`TestNode`] is a `Node` on a temporary data directory with
//! `weir serve`'s defaults (like InfluxDB 3's `TestServer`). Real-binary tests stay for what needs a process (signals,
//! `kill -9`, ports).

use std::time::Duration;

use weir_api::commands::serve::ServeArgs;
use weir_api::node::{Node, NodeConfig};
use weir_operators::DeviceId;
use weir_pipeline::decode::ReadingFields;
use weir_pipeline::stats::{Answer, Query};

/// A node on its own temporary data directory (kept across restarts).
struct TestNode {
    dir: tempfile::TempDir,
    node: Option<Node>,
}

impl TestNode {
    /// `weir serve`'s defaults, with small flushes so that parts appear quickly.
    fn config(dir: &std::path::Path) -> NodeConfig {
        let mut config = ServeArgs::defaults(dir).node_config().expect("the defaults are a valid configuration");
        config.archiver.flush_rows = 1;
        config.archiver.flush_age = Duration::from_millis(20);
        config
    }

    async fn start() -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(Self::config(dir.path())).await.expect("the node starts");
        TestNode { dir, node: Some(node) }
    }

    fn node(&self) -> &Node {
        self.node.as_ref().expect("running")
    }

    /// A clean stop and a start on the same data directory.
    async fn restart(&mut self) {
        self.node.take().expect("running").shutdown().await;
        self.node = Some(Node::start(Self::config(self.dir.path())).await.expect("the node restarts"));
    }

    /// Ingests `(sensor, value, timestamp)` readings of device `d`; returns the position they were written at.
    async fn ingest(&self, readings: &[(&str, f64, &str)]) -> u64 {
        let fields = readings.iter().map(|&(sensor, value, timestamp)| {
            Ok(ReadingFields {
                sensor: Some(sensor),
                value: Some(value),
                timestamp: Some(weir_pipeline::decode::Timestamp::Rfc3339(timestamp)),
                device: Some("d"),
            })
        });
        let outcome = self.node().ingest().ingest_readings(fields, 0, false, None).await;
        assert_eq!((outcome.accepted, outcome.rejected), (readings.len() as u64, 0), "{:?}", outcome.errors);
        outcome.position.expect("written")
    }

    /// The number of readings per sensor of device `d` in the live statistics (its 1-day windows), by sensor name.
    async fn counts(&self, after: u64) -> Vec<(String, i64)> {
        let stats = self.node().stats();
        let after = Some(weir_api::position::LogPosition { process: None, position: after });
        let Answer::Latest(latest) = stats.ask(Query::Latest { device: Some(DeviceId::of("d")) }, after).await.unwrap()
        else {
            panic!("a latest answer")
        };
        let mut out = Vec::new();
        for (series, _) in latest {
            let query = Query::Series { series, width: weir_operators::Width::Day, from: i64::MIN, to: i64::MAX };
            let Answer::Windows { windows, .. } = stats.ask(query, None).await.unwrap() else { panic!("windows") };
            let sensor = stats.sensor_name(series.sensor).await.expect("a stored sensor").to_string();
            out.push((sensor, windows.iter().map(|(_, agg)| agg.count).sum()));
        }
        out.sort();
        out
    }

    /// `SELECT sensor, count(*)` over the archive.
    async fn archived(&self) -> Vec<(String, i64)> {
        let result = self
            .node()
            .sql()
            .query("SELECT CAST(sensor AS VARCHAR) AS s, count(*) AS n FROM readings GROUP BY s ORDER BY s")
            .await
            .unwrap();
        let mut out = Vec::new();
        for batch in &result.batches {
            let sensors = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
            let sensors = arrow::array::cast::as_string_array(&sensors);
            let counts = arrow::compute::cast(batch.column(1), &arrow::datatypes::DataType::Int64).unwrap();
            let counts = arrow::array::cast::as_primitive_array::<arrow::datatypes::Int64Type>(&counts);
            for i in 0..batch.num_rows() {
                out.push((sensors.value(i).to_owned(), counts.value(i)));
            }
        }
        out
    }
}

/// The data-loss reproduction of issue 15, in-process: sensors that first appear in later archive parts keep every
/// first write across a restart, in the archive and the statistics alike; a duplicate stays a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn an_in_process_node_keeps_every_first_write_across_a_restart() {
    let mut node = TestNode::start().await;
    for request in [
        vec![("speed", 1.0, "2026-11-20T10:00:00Z")],
        vec![("fuel", 2.0, "2026-11-20T10:00:01Z"), ("speed", 3.0, "2026-11-20T10:00:01Z")],
        vec![("engine_temperature", 4.0, "2026-11-20T10:00:02Z"), ("revolution", 5.0, "2026-11-20T10:00:09Z")],
        vec![("location_latitude", 6.0, "2026-11-20T10:00:08Z")],
    ] {
        node.ingest(&request).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.restart().await;
    node.ingest(&[("location_latitude", 7.0, "2026-11-20T10:00:09Z"), ("revolution", 8.0, "2026-11-20T10:00:08Z")])
        .await;
    let last = node.ingest(&[("speed", 99.0, "2026-11-20T10:00:00Z")]).await; // a duplicate: dropped
    let want = vec![
        ("engine_temperature".to_owned(), 1),
        ("fuel".to_owned(), 1),
        ("location_latitude".to_owned(), 2),
        ("revolution".to_owned(), 2),
        ("speed".to_owned(), 2),
    ];
    assert_eq!(node.archived().await, want);
    assert_eq!(node.counts(last).await, want, "the statistics count what the archive holds");
    node.restart().await;
    assert_eq!(node.archived().await, want, "after a second restart, from the archive alone");
    node.node.take().unwrap().shutdown().await;
}
