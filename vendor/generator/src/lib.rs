//! # generator
//!
//! Rust generator library
//!

#![deny(warnings, missing_docs)]
#![allow(deprecated)]

#[macro_use]
extern crate log;

mod detail;
mod gen_impl;
mod reg_context;
mod rt;
mod scope;
mod stack;
mod yield_;

pub use crate::gen_impl::{Generator, Gn, LocalGenerator, DEFAULT_STACK_SIZE};
pub use crate::rt::{get_local_data, is_generator, Error};
pub use crate::scope::Scope;
pub use crate::stack::shares_mappings as stacks_share_mappings;
pub use crate::stack::StackError;
pub use crate::stack::{
    decay_dirty as decay_dirty_stacks, dirty_bytes as dirty_stack_bytes,
    set_dirty_limit as set_dirty_stack_limit, shrink_dirty as shrink_dirty_stacks,
    DIRTY_BYTES as DIRTY_STACK_BYTES,
};
pub use crate::yield_::{
    co_get_yield, co_set_para, co_yield_with, done, get_yield, yield_, yield_from, yield_with,
};
