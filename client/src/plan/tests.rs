//! Tests of the planner.
use super::*;
