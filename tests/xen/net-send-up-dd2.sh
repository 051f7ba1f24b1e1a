#!/bin/sh
cat /tmp/up2
