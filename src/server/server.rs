//! A gRPC server serving the raft service on one address.

use std::sync::Arc;

use grpcio::{ChannelBuilder, Environment, Server as GrpcServer, ServerBuilder};
use security::SecurityManager;

use super::raft_extension::RaftExtension;
use super::service::Service;

/// A started raft server.
pub struct Server {
    server: Option<GrpcServer>,
    addr: String,
}

impl Server {
    /// Binds `addr` (`host:port`, port 0 picks a free one) and serves `svc`
    /// in plaintext.
    pub fn start<E: RaftExtension>(
        env: Arc<Environment>,
        addr: &str,
        svc: Service<E>,
    ) -> Result<Server, grpcio::Error> {
        Server::start_with(env, addr, svc, &SecurityManager::plaintext())
    }

    /// As [`start`](Self::start), with `security`: TLS requiring a client
    /// certificate the CA signed, certificates re-read for new connections,
    /// and `cert-allowed-cn` checked on every call.
    pub fn start_with<E: RaftExtension>(
        env: Arc<Environment>,
        addr: &str,
        svc: Service<E>,
        security: &Arc<SecurityManager>,
    ) -> Result<Server, grpcio::Error> {
        let (host, _) = addr.rsplit_once(':').ok_or_else(|| {
            grpcio::Error::BindFail(std::ffi::CString::new(addr).unwrap_or_default())
        })?;
        // gRPC binds with SO_REUSEPORT by default: a second store on the
        // same port would share it silently. Refuse instead.
        // As upstream's server: up to 1024 concurrent streams per
        // connection, and no limit on a received message's length (the
        // sender bounds it with its max-grpc-send-msg-len).
        let args = ChannelBuilder::new(env.clone())
            .reuse_port(false)
            .max_concurrent_stream(1024)
            .max_receive_message_len(-1)
            .build_args();
        let builder = ServerBuilder::new(env)
            .channel_args(args)
            .register_service(kvproto::tikvpb::create_tikv(svc));
        let mut server = security.bind(builder).build()?;
        let port = server.add_listening_port(addr, security.server_credentials())?;
        server.start();
        Ok(Server {
            server: Some(server),
            addr: format!("{}:{}", host, port),
        })
    }

    /// The bound address, `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Stops serving; open streams are cancelled.
    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            // Open streams never end by themselves: cancel them, then wait.
            let f = s.shutdown();
            s.cancel_all_calls();
            let _ = futures::executor::block_on(f);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
