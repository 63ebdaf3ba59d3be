//! etcd's user/password authentication: `Authenticate` gives a token, sent with every request
//! as `token` metadata, and fetched again when etcd says it is no longer valid (simple tokens
//! expire after `--auth-token-ttl`, 5 minutes by default). The password never leaves this
//! module except towards etcd.

use std::sync::{Arc, RwLock};

use hstream_proto::etcd::AuthenticateRequest;
use hstream_proto::etcd::auth_client::AuthClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::secret::Secret;

/// A channel whose requests carry the current token (none without a user).
pub(super) type Authed = InterceptedService<Channel, TokenHeader>;

#[derive(Clone, Default)]
pub struct TokenHeader(Arc<RwLock<Option<MetadataValue<Ascii>>>>);

impl Interceptor for TokenHeader {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = self.0.read().expect("token lock").clone() {
            req.metadata_mut().insert("token", token);
        }
        Ok(req)
    }
}

pub(super) struct Auth {
    pub(super) client: AuthClient<Channel>,
    /// The user and password, when etcd's auth is on.
    pub(super) user: Option<(String, Secret)>,
    pub(super) token: TokenHeader,
}

impl Auth {
    pub(super) fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|(u, _)| u.as_str())
    }

    /// One `Authenticate` call; on success the token is in place for every later request.
    pub(super) async fn authenticate(&self, timeout: std::time::Duration) -> Result<(), tonic::Status> {
        let Some((name, password)) = &self.user else {
            return Ok(());
        };
        let mut request = tonic::Request::new(AuthenticateRequest {
            name: name.clone(),
            password: password.0.clone(),
        });
        request.set_timeout(timeout);
        let token = self.client.clone().authenticate(request).await?.into_inner().token;
        let token = MetadataValue::try_from(token)
            .map_err(|_| tonic::Status::internal("etcd gave a token that is not ASCII"))?;
        *self.token.0.write().expect("token lock") = Some(token);
        Ok(())
    }
}
