//! Client library (being written).
