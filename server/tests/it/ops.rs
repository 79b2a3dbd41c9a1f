//! Service conventions, in process: grpc.health.v1 and server reflection, reachable without a
//! token while the sync service needs one.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use lbsync_proto::pb;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::util::*;

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn check(h: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    let r: HealthCheckResponse = h
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    r.status()
}

#[tokio::test]
async fn health_answers_serving_without_a_token_and_not_serving_at_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let config = lbsync_server::ServerConfig {
        tokens: lbsync_server::Tokens::parse("secret"),
        ..Default::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let mut sync = server.client().await;
    let refused = sync
        .handshake(pb::HandshakeRequest {
            protocol_version: lbsync_proto::PROTOCOL_VERSION,
            folder: "f".into(),
            device: "d".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    let mut health = HealthClient::new(channel(server.addr).await);
    assert_eq!(check(&mut health, "").await, ServingStatus::Serving);
    assert_eq!(
        check(&mut health, "lbsync.v1.Sync").await,
        ServingStatus::Serving
    );
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut watch = health
        .watch(HealthCheckRequest {
            service: "lbsync.v1.Sync".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    // The stop waits for the Watch stream to end: it must end it, after NOT_SERVING.
    let stopped = tokio::spawn(server.stop());
    let mut seen = Vec::new();
    while let Some(Ok(r)) = tokio::time::timeout(std::time::Duration::from_secs(20), watch.next())
        .await
        .expect("the watch stream ends at the stop")
    {
        seen.push(r.status());
    }
    assert_eq!(
        seen,
        [ServingStatus::NotServing],
        "watched through the stop"
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), stopped)
        .await
        .expect("the server stops without waiting out the drain")
        .unwrap();
}

#[tokio::test]
async fn reflection_lists_the_services_without_a_token() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let config = lbsync_server::ServerConfig {
        tokens: lbsync_server::Tokens::parse("secret"),
        ..Default::default()
    };
    let server = TestServer::start_with(dir.path(), config).await;
    let mut client = ServerReflectionClient::new(channel(server.addr).await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("lbsync.v1.Sync".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("ListServices answers with a list");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for want in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "lbsync.v1.Sync",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("FileContainingSymbol answers with descriptors");
    };
    let protos: Vec<prost_types_lite::File> = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types_lite::File::decode(b))
        .collect();
    assert!(
        protos
            .iter()
            .any(|f| f.name == "lbsync/v1/sync.proto" && f.package == "lbsync.v1"),
        "{protos:?}"
    );

    // The older v1alpha protocol, which grpcurl and many tools still speak.
    use tonic_reflection::pb::v1alpha as alpha;
    let mut old =
        alpha::server_reflection_client::ServerReflectionClient::new(channel(server.addr).await);
    let mut answers = old
        .server_reflection_info(tokio_stream::iter([alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        }]))
        .await
        .unwrap()
        .into_inner();
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha ListServices answers with a list");
    };
    assert!(
        list.service.iter().any(|s| s.name == "lbsync.v1.Sync"),
        "{list:?}"
    );
    server.stop().await;
}

/// Just enough of `FileDescriptorProto` (name = 1, package = 2) to check what reflection sends.
mod prost_types_lite {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct File {
        #[prost(string, tag = "1")]
        pub(crate) name: String,
        #[prost(string, tag = "2")]
        pub(crate) package: String,
    }

    impl File {
        pub(crate) fn decode(b: &[u8]) -> Self {
            <Self as prost::Message>::decode(b).unwrap()
        }
    }
}
