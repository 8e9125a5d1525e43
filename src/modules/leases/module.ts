import { notInitialised, type CreditModule } from "../../core/module.js";
import { coreOf, type CreditCore } from "../../core/services/credit-core.js";
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
  let core: CreditCore | undefined;
  return {
    id: "leases",
    init(ctx) {
      core = coreOf(ctx);
    },
    leases(options) {
      if (core === undefined) throw notInitialised("leases");
      return new CreditLeases(leaseCore(core, metering.session()), options);
    },
  };
}
