#!/bin/sh
cat > /tmp/down
