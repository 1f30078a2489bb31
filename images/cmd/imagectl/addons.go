package main

import "github.com/labfleet/labfleet/extensions/addonscmd"

func init() { commands = append(commands, addonscmd.NewCommand) }
