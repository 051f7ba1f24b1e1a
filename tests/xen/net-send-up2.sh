#!/bin/sh
cat /tmp/up2 /tmp/up2 /tmp/up2 /tmp/up2
