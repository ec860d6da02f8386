//! The classic eventlet programs on greenhub, as library code the example binaries run and
//! the tests drive.

pub mod chat;
pub mod crawler;
pub mod pipeline;
pub mod stop;
pub mod web;
