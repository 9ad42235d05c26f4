"""Benchmarks run by ``p2pfed bench NAME``; each prints one JSON document.

Every module here follows the command-module contract of ``p2pfed.cli`` (``NAME``, ``HELP``,
``register``). A benchmark compares against its baseline *in the same run* (figures from
different runs on a shared 2-core machine are not comparable) and never asserts a time.
"""
