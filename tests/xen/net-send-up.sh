#!/bin/sh
cat /tmp/up
