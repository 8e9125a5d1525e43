import { notInitialised, type CreditModule, type ModuleContext } from "../../core/module.js";
import type { MeteringModule } from "../metering/module.js";
import type { LeaseOptions } from "./model.js";
import { CreditLeases, leaseCore } from "./service.js";

/** The leases module (docs/metering.md, "Leases") as a `CreditModule`, building leases once initialised. */
export interface LeasesModule extends CreditModule {
  /** New leases over the core and metering's sessions (a `ConfigurationError` before `init`). */
  leases(options: LeaseOptions): CreditLeases;
}

/** The leases module, on top of `metering` (a lease's requests are metering sessions). */
export function leasesModule(metering: MeteringModule): LeasesModule {
  let core: ModuleContext | undefined;
  return {
    id: "leases",
    init(ctx) {
      core = ctx;
    },
    leases(options) {
      if (core === undefined) throw notInitialised("leases");
      return new CreditLeases(leaseCore(core, metering.session()), options);
    },
  };
}
