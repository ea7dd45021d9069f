#include "cli.h"
int pc_cli_simulate(struct pc_cli *c) { (void)c; return 2; }
