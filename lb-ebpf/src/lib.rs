#![no_std]
// This lets lb-daemon depend on lb-ebpf (so cargo rebuilds the object when it changes)
// without linking anything: the programs live in the `lb-ebpf` binary target.
