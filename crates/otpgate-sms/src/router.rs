//! Routing: which channels, in which order, take a message. A route matches
//! on the destination's dialing code and the `flowType`; the first matching
//! route wins and its channels are tried in order (failover, see the worker).

use std::sync::Arc;

use otpgate_core::fraud::NumberKind;
use otpgate_store::OutboxMessage;

use crate::channel::Channel;

/// Chooses the ordered channels for a message (routing by destination and
/// flow). The simplest router sends everything down one list; the configured
/// one is [`RouteTable`].
pub trait Router: Send + Sync + 'static {
    /// The channels to try, in order; empty when no route takes the message
    /// (it then fails at once and is refunded).
    fn route(&self, msg: &OutboxMessage) -> Vec<Arc<dyn Channel>>;
    /// Every channel, for health and shutdown.
    fn channels(&self) -> Vec<Arc<dyn Channel>>;
    /// Whether some route takes messages to this dialing code and flow: the
    /// server answers 400 to a send for a flow no channel serves (contract
    /// §2, `flowType`).
    fn accepts(&self, _country_code: u16, _flow_type: &str) -> bool {
        true
    }
    /// Whether a number of this type may be sent to: mobile numbers always;
    /// others only where the route opts in (`number_types`), so fixed-line,
    /// premium-rate and the like are refused by default (fraud defence).
    fn allows_number_type(
        &self,
        _country_code: u16,
        _flow_type: &str,
        kind: otpgate_core::fraud::NumberKind,
    ) -> bool {
        kind.accepted_by_default()
    }
    /// The fallback workflow of the route that takes this dialing code and
    /// flow: the later steps the server queues with the first.
    fn fallback(&self, _country_code: u16, _flow_type: &str) -> Vec<FallbackStep> {
        Vec::new()
    }
}

/// Every message to the same channels, in order.
pub struct SingleRoute(pub Vec<Arc<dyn Channel>>);

impl Router for SingleRoute {
    fn route(&self, _msg: &OutboxMessage) -> Vec<Arc<dyn Channel>> {
        self.0.clone()
    }
    fn channels(&self) -> Vec<Arc<dyn Channel>> {
        self.0.clone()
    }
}

/// One `[[routes]]` entry, with its channels resolved.
pub struct Route {
    /// Empty matches any destination.
    pub country_codes: Vec<u16>,
    /// Upper-case; empty matches any flow.
    pub flow_types: Vec<String>,
    pub channels: Vec<Arc<dyn Channel>>,
    /// Number types taken beyond those accepted by default (mobile).
    pub number_types: Vec<NumberKind>,
    /// The fallback workflow's later steps, in order.
    pub fallback: Vec<FallbackStep>,
}

/// One later step of a route's fallback workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackStep {
    /// Upper-case `flowType`.
    pub flow_type: String,
    /// Seconds after the send at which it goes unless an earlier step was
    /// delivered.
    pub after_secs: u32,
}

impl Route {
    /// A route for every message.
    pub fn any(channels: Vec<Arc<dyn Channel>>) -> Self {
        Self {
            country_codes: Vec::new(),
            flow_types: Vec::new(),
            channels,
            number_types: Vec::new(),
            fallback: Vec::new(),
        }
    }

    pub fn matches(&self, country_code: u16, flow_type: &str) -> bool {
        (self.country_codes.is_empty() || self.country_codes.contains(&country_code))
            && (self.flow_types.is_empty()
                || self
                    .flow_types
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(flow_type)))
    }
}

/// The configured routes; built by [`crate::config::build`].
pub struct RouteTable {
    routes: Vec<Route>,
    channels: Vec<Arc<dyn Channel>>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>, channels: Vec<Arc<dyn Channel>>) -> Self {
        Self { routes, channels }
    }

    /// The channels for a destination and flow; empty when no route matches.
    pub fn select(&self, country_code: u16, flow_type: &str) -> Vec<Arc<dyn Channel>> {
        self.routes
            .iter()
            .find(|r| r.matches(country_code, flow_type))
            .map(|r| r.channels.clone())
            .unwrap_or_default()
    }
}

impl Router for RouteTable {
    fn route(&self, msg: &OutboxMessage) -> Vec<Arc<dyn Channel>> {
        self.select(msg.destination.country_code(), &msg.flow_type)
    }

    fn channels(&self) -> Vec<Arc<dyn Channel>> {
        self.channels.clone()
    }

    fn accepts(&self, country_code: u16, flow_type: &str) -> bool {
        self.routes
            .iter()
            .any(|r| r.matches(country_code, flow_type) && !r.channels.is_empty())
    }

    fn allows_number_type(&self, country_code: u16, flow_type: &str, kind: NumberKind) -> bool {
        kind.accepted_by_default()
            || self
                .routes
                .iter()
                .find(|r| r.matches(country_code, flow_type))
                .is_some_and(|r| r.number_types.contains(&kind))
    }

    fn fallback(&self, country_code: u16, flow_type: &str) -> Vec<FallbackStep> {
        self.routes
            .iter()
            .find(|r| r.matches(country_code, flow_type))
            .map(|r| r.fallback.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{Accepted, ChannelError, ChannelHealth, Outgoing};
    use async_trait::async_trait;

    struct Named(&'static str);

    #[async_trait]
    impl Channel for Named {
        fn name(&self) -> &str {
            self.0
        }
        async fn send(&self, _: &Outgoing) -> Result<Accepted, ChannelError> {
            Err(ChannelError::Unavailable("test".into()))
        }
        fn health(&self) -> ChannelHealth {
            ChannelHealth {
                name: self.0.into(),
                kind: "test",
                up: false,
                last_error: None,
            }
        }
    }

    /// A route for one flow to `channels`, any destination, mobiles only.
    fn route(flow: &str, channels: &[&Arc<dyn Channel>]) -> Route {
        Route {
            country_codes: vec![],
            flow_types: vec![flow.into()],
            channels: channels.iter().map(|c| Arc::clone(c)).collect(),
            number_types: vec![],
            fallback: vec![],
        }
    }

    fn names(v: &[Arc<dyn Channel>]) -> Vec<&str> {
        v.iter().map(|c| c.name()).collect()
    }

    #[test]
    fn first_matching_route_wins() {
        let a: Arc<dyn Channel> = Arc::new(Named("a"));
        let b: Arc<dyn Channel> = Arc::new(Named("b"));
        let w: Arc<dyn Channel> = Arc::new(Named("w"));
        let t = RouteTable::new(
            vec![
                route("WHATSAPP", &[&w]),
                Route {
                    country_codes: vec![91, 44],
                    number_types: vec![NumberKind::FixedLine],
                    ..route("SMS", &[&a, &b])
                },
                route("SMS", &[&b]),
            ],
            vec![a, b, w],
        );
        assert_eq!(names(&t.select(91, "SMS")), ["a", "b"]);
        assert_eq!(names(&t.select(44, "sms")), ["a", "b"]);
        assert_eq!(names(&t.select(1, "SMS")), ["b"]);
        // Fixed lines only where the first matching route opts in.
        assert!(t.allows_number_type(91, "SMS", NumberKind::FixedLine));
        assert!(!t.allows_number_type(1, "SMS", NumberKind::FixedLine));
        assert!(t.allows_number_type(1, "SMS", NumberKind::FixedLineOrMobile));
        assert!(!t.allows_number_type(44, "SMS", NumberKind::PremiumRate));
        assert_eq!(names(&t.select(91, "WHATSAPP")), ["w"]);
        assert!(t.select(91, "RCS").is_empty());
        assert!(t.accepts(1, "SMS"));
        assert!(!t.accepts(1, "RCS"));
    }
}
