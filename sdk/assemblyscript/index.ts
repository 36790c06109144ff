// Package entry for asc, which resolves "@extproc/sdk" to this file.
export * from "./assembly/index";
